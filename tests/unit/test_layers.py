"""The one-way layers of ARCHITECTURE.md, read from the source (AST, so lazy imports inside functions count too):

    jobs/     entry points, plans, reports and plots   → may import every layer below
    serve/    Ray Serve apps                           → actors, common
    actors/   who computes (actors/algo: torch only)   → cluster, common
    cluster/  where things run                         → common
    common/   the ground: config, records, errors      → nothing of ours

Nothing outside jobs/, bench/ and tests/ imports jobs/, and the product's import graph has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("common", "cluster", "actors", "serve", "jobs")
PROJECT = PRODUCT + ("bench", "tests")
MAY_IMPORT = {
    "common": {"common"},
    "cluster": {"common", "cluster"},
    "actors": {"common", "cluster", "actors"},
    "serve": {"common", "actors", "serve"},
    "jobs": set(PRODUCT),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_files() -> list[Path]:
    return sorted(path for layer in PRODUCT for path in (REPO / layer).rglob("*.py"))


MODULES = {module_name(path) for path in product_files()}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a project module in the file; `from pkg import sub` names the submodule
    when `sub` is one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.append((node.lineno, submodule if submodule in MODULES else node.module))
    return list(dict.fromkeys((line, name) for line, name in found if name.split(".")[0] in PROJECT))


@pytest.mark.parametrize("layer", PRODUCT)
def test_each_layer_imports_only_the_layers_below_it(layer):
    offenders = [f"{path.relative_to(REPO)}:{line} imports {name}"
                 for path in sorted((REPO / layer).rglob("*.py")) for line, name in imports_of(path)
                 if name.split(".")[0] not in MAY_IMPORT[layer]]
    assert not offenders, f"{layer}/ may import only {sorted(MAY_IMPORT[layer])}:\n" + "\n".join(offenders)


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): {name for _, name in imports_of(path) if name in MODULES and name != module_name(path)}
            for path in product_files()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (depth-first search with an explicit stack)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_the_product_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_layer_check_reads_lazy_imports_too(tmp_path):
    sample = tmp_path / "lazy.py"
    sample.write_text("def f():\n    from jobs.cli import run_main\n    import cluster.runtime\n")
    assert imports_of(sample) == [(2, "jobs.cli"), (3, "cluster.runtime")]
