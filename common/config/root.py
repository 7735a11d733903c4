"""The one place where rayalign's seed defaults live (SPEC.md), as typed, frozen, validated dataclasses.

A YAML recipe under configs/ only lists what differs from these defaults; `a.b=value` on the command line
overrides both. Every field carries its help text, which `python -m jobs.<name> --help` prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Collection

from common.config.curate import CurateConfig
from common.config.infra import DeepSpeedConfig, LoraConfig, ModelConfig, RayConfig, RunConfig
from common.config.pipeline import PipelineConfig, ProfileConfig, StageName
from common.config.ppo import PPOConfig
from common.config.rag import RagConfig
from common.config.serving import PolicyServeConfig, ServeConfig
from common.config.synth import SynthConfig
from common.config.training import DataConfig, DPOConfig, RewardModelConfig, SFTConfig
from common.configlib import apply_overrides, build, read_yaml, section
from common.errors import ConfigError
from common.model_dir import check_model_dir
from common.plugins import check_reward_functions, load_callable


@dataclass(frozen=True)
class Config:
    run: RunConfig = section(RunConfig, "run identity and outputs")
    ray: RayConfig = section(RayConfig, "where things run")
    model: ModelConfig = section(ModelConfig, "the base / policy model")
    lora: LoraConfig = section(LoraConfig, "LoRA adapters")
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig, "DeepSpeed ZeRO")
    data: DataConfig = section(DataConfig, "SFT data")
    sft: SFTConfig = section(SFTConfig, "supervised fine-tuning")
    reward_model: RewardModelConfig = section(RewardModelConfig, "reward model training")
    ppo: PPOConfig = section(PPOConfig, "PPO")
    dpo: DPOConfig = section(DPOConfig, "DPO")
    curate: CurateConfig = section(CurateConfig, "SFT data curation")
    serve: ServeConfig = section(ServeConfig, "reward model serving")
    serve_policy: PolicyServeConfig = section(PolicyServeConfig, "policy serving, OpenAI-compatible")
    pipeline: PipelineConfig = section(PipelineConfig, "the end-to-end pipeline")
    profile: ProfileConfig = section(ProfileConfig, "hardware profile and task type (jobs.plan)")
    rag: RagConfig = section(RagConfig, "fine-tuning against retrieval (jobs.compare_rag)")
    synth: SynthConfig = section(SynthConfig, "synthetic SFT candidates from an LLM (jobs.synthesize, jobs.funnel)")

    @property
    def ppo_start_model(self) -> str:
        """The policy PPO starts from (and its reference and value model unless set apart): ppo.init_model (the
        pipeline passes its SFT model), else model.path."""
        return self.ppo.init_model or self.model.path

    # Cross-section rules live here, in one place; a section's own rules live in its check().
    def check(self) -> None:
        """Rules across sections that hold whatever job runs (build() calls it on every load)."""
        if self.model.quantization == "4bit" and not self.lora.enabled:
            raise ConfigError("lora.enabled must be true with model.quantization=4bit (QLoRA trains adapters only)")
        if self.deepspeed.precision == "fp16" and self.model.dtype == "bfloat16":
            raise ConfigError("deepspeed.precision=fp16 conflicts with model.dtype=bfloat16")
        for stage in ("ppo", "dpo"):
            if getattr(self, stage).reference == "adapter_disabled" and not self.lora.enabled:
                raise ConfigError(f"{stage}.reference=adapter_disabled needs lora.enabled=true (without adapters there "
                                  f"is nothing to disable); use {stage}.reference=copy for full fine-tuning")

    def _check_reward_model_size(self, policy) -> None:
        """SPEC §3 for the pair PPO trains with: warn (or refuse, reward_model.refuse_oversize) when the reward
        model is far larger than the policy. Counted from safetensors headers; a folder without them is not
        counted (nothing to read without loading the weights)."""
        from common.errors import ModelDirError
        from common.model_sizes import check_size_match, parameter_count_on_disk

        try:
            sizes = parameter_count_on_disk(self.ppo.reward.rm_path), parameter_count_on_disk(policy)
        except ModelDirError:
            return
        check_size_match(*sizes, self.reward_model.size_ratio_warn, self.reward_model.refuse_oversize)

    def check_stage(self, stage: StageName, wired: Collection[str] = ()) -> None:
        """Rules for a stage about to run, checked before Ray starts. `wired` names the inputs an earlier stage of
        jobs.pipeline hands over (sft_model, reward_model): those need not exist yet."""
        if stage == "ppo":
            reward = self.ppo.reward
            if reward.rm_source == "model" and "rm" in reward.enabled_terms and "reward_model" not in wired:
                if not reward.rm_path:
                    raise ConfigError("ppo.reward.rm_path must name a trained reward model folder when "
                                      "ppo.reward.rm_source=model (or score with rm_source=http, keyword or filler)")
                check_model_dir(reward.rm_path, what="ppo.reward.rm_path")
            if "sft_model" not in wired:
                check_model_dir(self.ppo_start_model, what="ppo.init_model" if self.ppo.init_model else "model.path")
            if reward.rm_source == "model" and "rm" in reward.enabled_terms and "reward_model" not in wired:
                # A pipeline's SFT model is model.path fine-tuned, of the same size: checked now, not after SFT.
                self._check_reward_model_size(self.model.path if "sft_model" in wired else self.ppo_start_model)
            check_reward_functions(self.ppo)
            if self.model.quantization != "none":
                # The engines are sent the policy's weights as PEFT holds them: bitsandbytes' int8 codes or packed
                # 4-bit bytes, not numbers (vLLM would sample from garbage, or fail on the shapes).
                raise ConfigError(f"ppo with model.quantization={self.model.quantization}: the rollout engines cannot "
                                  f"take quantized weights from the policy; train PPO from an unquantized model "
                                  f"(model.quantization=none, LoRA allowed), or align with DPO")
            if self.ppo.environment.name is not None and ":" in self.ppo.environment.name:
                load_callable(self.ppo.environment.name, "ppo.environment.name")
        elif stage == "synthesize":
            if self.synth.category not in self.curate.mix:
                raise ConfigError(f"synth.category {self.synth.category!r} is not a category of curate.mix "
                                  f"({sorted(self.curate.mix)})")
            if self.synth.generator == "engine":
                check_model_dir(self.synth.model or self.model.path,
                                what="synth.model" if self.synth.model else "model.path")
        elif stage in ("sft", "reward_model") or (stage == "dpo" and "sft_model" not in wired):
            check_model_dir(self.model.path, what="model.path")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults ← YAML file ← `a.b=value` overrides, validated; raises ConfigError naming the field."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    return build(Config, data)


def with_overrides(cfg: Config, **sections) -> Config:
    """Replace whole sections programmatically (tests, the pipeline) and re-validate cross-field rules."""
    new = replace(cfg, **sections)
    new.check()
    return new
