"""House rule 1: actors.algo imports only torch and the standard library. Also the generic Registry."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from actors.algo.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[2]
ALGO_DIR = REPO_ROOT / "actors" / "algo"
BLOCKED = ("ray", "vllm", "deepspeed", "transformers")
# Every module in the package, so a module added later is held to the rule without editing this test.
SUBMODULES = tuple(sorted(path.stem for path in ALGO_DIR.glob("*.py") if path.stem != "__init__"))
CORE_SUBMODULES = (
    "registry", "masked", "logprobs", "kl", "advantages", "policy_loss", "value_loss", "preference"
)

IMPORT_WITH_HEAVY_PACKAGES_BLOCKED = f"""
import importlib, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of it now raises ImportError
import actors.algo
for name in {SUBMODULES!r}:
    importlib.import_module("actors.algo." + name)
print("ok")
"""


def test_core_submodules_are_discovered():
    assert set(CORE_SUBMODULES) <= set(SUBMODULES)


def test_algo_imports_with_ray_vllm_deepspeed_transformers_blocked():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_WITH_HEAVY_PACKAGES_BLOCKED],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("module", SUBMODULES + ("__init__",))
def test_algo_modules_import_only_torch_stdlib_and_each_other(module):
    # Catches a forbidden import even where it would be lazy (inside a function) or of a package the
    # subprocess test does not block.
    tree = ast.parse((ALGO_DIR / f"{module}.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    allowed_roots = set(sys.stdlib_module_names) | {"torch", "actors", "__future__"}
    offenders = sorted(name for name in imported if name.split(".")[0] not in allowed_roots)
    assert not offenders, f"actors/algo/{module}.py imports {offenders}"
    own = [name for name in imported if name.split(".")[0] == "actors"]
    assert all(name == "actors.algo" or name.startswith("actors.algo.") for name in own), own


def test_public_names_are_exported():
    import actors.algo

    for name in actors.algo.__all__:
        assert hasattr(actors.algo, name), name


# Registry


def make_registry():
    registry = Registry("kl estimator")

    @registry.register("k1")
    def k1():
        return "one"

    @registry.register("k3")
    def k3():
        return "three"

    return registry, k1


def test_register_returns_the_object_and_get_finds_it():
    registry, k1 = make_registry()
    assert registry.get("k1") is k1
    assert registry.get("k1")() == "one"
    assert registry.names() == ["k1", "k3"]
    assert "k3" in registry and "k2" not in registry


def test_unknown_name_lists_known_names_and_the_closest_match():
    registry, _ = make_registry()
    with pytest.raises(KeyError) as raised:
        registry.get("k33")
    message = str(raised.value)
    assert "unknown kl estimator 'k33'" in message
    assert "known: k1, k3" in message
    assert "Did you mean 'k3'?" in message


def test_unknown_name_without_a_close_match_still_lists_known_names():
    registry, _ = make_registry()
    with pytest.raises(KeyError) as raised:
        registry.get("completely different")
    assert "known: k1, k3" in str(raised.value) and "Did you mean" not in str(raised.value)


def test_registering_a_name_twice_is_refused():
    registry, _ = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register("k1")(lambda: None)
