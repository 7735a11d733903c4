"""rayalign's config: every seed default from the SPEC in one place, as typed, frozen, validated dataclasses.

One module per group of sections (each under 400 lines); the root `Config` and its cross-section rules live in
root.py. Import from here: `from common.config import Config, PPOConfig, load_config`.
"""

from common.config.curate import CURATE_SOURCE_KEYS, CurateConfig
from common.config.infra import DEFAULT_POLICY, DeepSpeedConfig, LoraConfig, ModelConfig, RayConfig, RunConfig
from common.config.pipeline import PipelineConfig, ProfileConfig, StageName, TaskType
from common.config.ppo import (KLConfig, PlacementConfig, PlacementStrategy, PPOConfig, RolePlacementConfig,
                               RolloutConfig)
from common.config.reward_mix import (BUILT_IN_TERMS, DEFAULT_FILLER_PHRASES, MonitorAction, MonitorConfig,
                                      RewardFunctionConfig, RewardMixConfig, RewardTermName)
from common.config.root import Config, load_config, with_overrides
from common.config.serving import PolicyServeConfig, ServeConfig
from common.config.synth import SynthConfig
from common.config.training import (DEFAULT_SFT_DATA, SFT_LR_BOUNDS, SFT_LR_BY_SIZE, SFT_LR_REFERENCE_BATCH, DataConfig,
                                    DPOConfig, RewardModelConfig, SFTConfig, sft_learning_rate)
from common.paths import REPO_ROOT, resolve_path

__all__ = [
    "BUILT_IN_TERMS", "CURATE_SOURCE_KEYS", "DEFAULT_FILLER_PHRASES", "DEFAULT_POLICY", "DEFAULT_SFT_DATA",
    "REPO_ROOT", "SFT_LR_BOUNDS", "SFT_LR_BY_SIZE", "SFT_LR_REFERENCE_BATCH", "Config", "CurateConfig", "DPOConfig",
    "DataConfig", "DeepSpeedConfig", "KLConfig", "LoraConfig", "ModelConfig", "MonitorAction", "MonitorConfig",
    "PPOConfig", "PipelineConfig", "PlacementConfig", "PlacementStrategy", "PolicyServeConfig", "ProfileConfig",
    "RayConfig", "RewardFunctionConfig", "RewardMixConfig", "RewardModelConfig", "RewardTermName",
    "RolePlacementConfig", "RolloutConfig", "RunConfig", "SFTConfig", "ServeConfig", "StageName", "SynthConfig",
    "TaskType", "load_config", "resolve_path", "sft_learning_rate", "with_overrides",
]
