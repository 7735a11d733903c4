"""What a recipe is for: the hardware profile and task type (jobs.plan), and the stages jobs.pipeline runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from common.configlib import param
from common.errors import ConfigError

TaskType = Literal["assistant", "code", "extraction", "creative", "safety"]


@dataclass(frozen=True)
class ProfileConfig:
    """The hardware a recipe is written for (SPEC §6) and the task it serves (SPEC §4); `python -m jobs.plan`
    checks the recipe's memory against it. The defaults describe the embedded CPU profile (configs/tiny-cpu.yaml)."""
    name: str = param("cpu", "hardware profile name (cpu, 1x4090, 2xa100, 4xa100, multi-node)")
    gpu: Optional[str] = param(None, "GPU model, e.g. A100-80GB (unset: CPU only)")
    gpu_memory_gib: float = param(0.0, "memory of one GPU in GiB", ge=0.0)
    gpus_per_node: int = param(0, "GPUs per node (0: CPU only)", ge=0)
    nodes: int = param(1, "nodes in the Ray cluster", gt=0)
    host_memory_gib: float = param(24.0, "CPU memory per node in GiB: CPU-only training and ZeRO offload live here",
                                   gt=0.0)
    usable_memory_share: float = param(0.9, "share of each GPU's (and the host's) memory a plan may fill; the rest "
                                            "is CUDA context, allocator fragmentation and communication buffers",
                                       gt=0.0, le=1.0)
    task_type: TaskType = param("assistant", "what the model is for: formatted-output tasks (code, extraction) get "
                                             "SFT only; open-ended ones (assistant, creative, safety) get RLHF "
                                             "where the profile affords it (SPEC §4)")
    expected_quality: str = param("", "what this recipe is reported to reach (SPEC §6), shown in the plan")
    price_per_gpu_hour: Optional[float] = param(None, "USD per GPU-hour for the plan's cost (unset: the known "
                                                      "device's default in jobs/planning/costs.py)", ge=0.0)
    mfu: Optional[float] = param(None, "model-FLOPs utilisation training reaches on this device, for the plan's "
                                       "hours (unset: the known device's default, e.g. 0.40 on an A100)",
                                 gt=0.0, le=1.0)
    decode_mfu: Optional[float] = param(None, "utilisation vLLM generation reaches (memory-bound; unset: the "
                                              "known device's default, e.g. 0.10)", gt=0.0, le=1.0)
    peak_tflops: Optional[float] = param(None, "dense 16-bit TFLOP/s of one GPU (unset: the known device's)",
                                         gt=0.0)
    sft_tokens: Optional[float] = param(None, "tokens of SFT data the plan costs (unset: counted from "
                                              "data.train_files at 4 characters per token)", gt=0.0)
    preference_tokens: Optional[float] = param(None, "tokens of preference pairs the plan costs for the reward "
                                                     "model and DPO (unset: counted from their train_files)", gt=0.0)

    def check(self) -> None:
        if (self.gpu is None) != (self.gpus_per_node == 0):
            raise ConfigError(f"gpu ({self.gpu}) and gpus_per_node ({self.gpus_per_node}) must be set together "
                              f"(both unset: a CPU-only profile)")
        if self.gpu is not None and self.gpu_memory_gib <= 0:
            raise ConfigError(f"gpu_memory_gib must be > 0 for gpu {self.gpu}")


StageName = Literal["synthesize", "curate", "sft", "reward_model", "ppo", "dpo"]


@dataclass(frozen=True)
class PipelineConfig:
    stages: list[StageName] = param(["curate", "sft", "reward_model", "ppo"],
                                    "stages jobs.pipeline runs in order; each feeds the next (curated data → SFT "
                                    "→ reward model → PPO, or dpo instead of reward_model + ppo); start with "
                                    "synthesize to curate LLM-generated candidates too (synth section)")
    sample_prompts: list[str] = param(["Tell me a story about a dog.", "What is the capital of France?",
                                       "Give three tips for staying healthy."],
                                      "fixed prompts answered by the base and the final model in the report")
    sample_max_new_tokens: int = param(48, "length of the report's sample answers (greedy)", gt=0)
    task_type: Optional[TaskType] = param(None, "what the model is for (unset: profile.task_type): for a "
                                                "formatted-output task (code, extraction) the pipeline skips its RLHF "
                                                "stages and says why (SPEC §4)")
    force_rlhf: bool = param(False, "run the RLHF stages even for a formatted-output task (the log says so)")

    def check(self) -> None:
        if not self.stages:
            raise ConfigError("stages must list at least one stage")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages lists a stage twice: {self.stages}")
        if "dpo" in self.stages and "ppo" in self.stages:
            raise ConfigError("stages holds both ppo and dpo; pick one alignment algorithm")
        if "synthesize" in self.stages and self.stages[:2] != ["synthesize", "curate"]:
            raise ConfigError(f"stages: synthesize must come first, followed by curate (its candidates are "
                              f"curated before training), got {self.stages}")
