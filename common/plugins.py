"""Code a user plugs in by name: 'package.module:function' or 'path/to/file.py:function' (a relative path is taken
from the current folder, then from the repository root, as every path in a recipe).

Loading is checked where it can be known: before Ray starts, a spec that does not import, does not name a
callable, or asks for columns the data lacks is one ConfigError naming the setting and the spec."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from typing import Callable

from common.errors import ConfigError
from common.paths import resolve_path

RESERVED_PARAMETERS = ("prompts", "responses")


def load_callable(spec: str, where: str) -> Callable:
    """The callable `spec` names; ConfigError naming `where` (the config key) when it cannot be had."""
    module_part, sep, name = spec.rpartition(":")
    if not sep or not module_part or not name:
        raise ConfigError(f"{where}: {spec!r} must look like 'package.module:function' or 'path/to/file.py:function'")
    if module_part.endswith(".py") and not resolve_path(module_part).is_file():
        raise ConfigError(f"{where}: file {resolve_path(module_part)} does not exist")
    try:
        module = _module_from_file(module_part) if module_part.endswith(".py") else importlib.import_module(module_part)
    except Exception as exc:  # the user's module may raise anything while it imports
        raise ConfigError(f"{where}: cannot import {module_part!r} ({type(exc).__name__}: {exc})") from None
    target = getattr(module, name, None)
    if not callable(target):
        raise ConfigError(f"{where}: {module_part!r} has no callable {name!r}")
    return target


def _module_from_file(path_text: str):
    path = resolve_path(path_text)
    # One module per file, named after its path, so two plug-ins called reward.py do not replace each other.
    module_name = f"rayalign_plugin_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def required_columns(fn: Callable, given: frozenset[str] = frozenset()) -> list[str]:
    """Keyword parameters of `fn(prompts, responses, ...)` without a default and not in `given` (the fixed
    arguments a config passes): the data columns each record must carry."""
    needed = []
    for parameter in list(inspect.signature(fn).parameters.values())[len(RESERVED_PARAMETERS):]:
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if parameter.default is parameter.empty and parameter.name not in given:
            needed.append(parameter.name)
    return needed


def check_reward_functions(ppo) -> None:
    """Before Ray starts: every plug-in reward function (ppo.reward.functions) imports, and every prompt record
    carries the columns it asks for; one ConfigError naming the function and the first record that lacks one."""
    from common.records import read_many

    needs = []
    for index, function in enumerate(ppo.reward.functions):
        where = f"ppo.reward.functions[{index}].callable"
        columns = required_columns(load_callable(function.callable, where), frozenset(function.kwargs))
        if columns:
            needs.append((where, function.callable, columns))
    if not needs:
        return
    for record in read_many(ppo.prompt_files, ppo.max_prompts):
        have = record.get("columns", {})
        for where, spec, columns in needs:
            missing = [column for column in columns if column not in have]
            if missing:
                raise ConfigError(f"{where}: {spec} needs column(s) {missing}, which the prompt record from "
                                  f"{record['source']} lacks")
