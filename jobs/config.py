"""The one place where rayalign's seed defaults live (SPEC.md), as typed, frozen, validated dataclasses.

A YAML recipe under configs/ only lists what differs from these defaults; `a.b=value` on the command line
overrides both. Every field carries its help text, which `python -m jobs.<name> --help` prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Optional

from jobs.configlib import ConfigError, apply_overrides, build, param, read_yaml, section

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = "../shared/models/stories260K-hd32"
DEFAULT_SFT_DATA = ["../shared/data/sft/llms-from-scratch/instruction-data.json"]


@dataclass(frozen=True)
class RunConfig:
    name: str = param("rayalign", "run name: outputs go to <output_root>/<name>/<stage>")
    output_root: str = param("outputs", "folder that holds every run's outputs")
    seed: int = param(42, "seed for data order, sampling and initialisation", ge=0)

    def output_dir(self, stage: str) -> Path:
        return resolve_path(self.output_root) / self.name / stage


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = param(None, "Ray cluster to join (e.g. 'auto' or 'ray://host:10001'); "
                                         "unset: RAY_ADDRESS, else an embedded local cluster on loopback")
    num_cpus: Optional[int] = param(None, "CPUs for the embedded cluster (unset: all)", gt=0)
    connect_timeout_s: float = param(30.0, "give up joining a cluster after this many seconds", gt=0)
    namespace: str = param("rayalign", "Ray namespace for named actors")
    include_dashboard: bool = param(False, "start the Ray dashboard with the embedded cluster")


@dataclass(frozen=True)
class ModelConfig:
    path: str = param(DEFAULT_POLICY, "local Hugging Face model folder (config.json + weights + tokenizer)")
    dtype: Literal["float32", "bfloat16", "float16"] = param("float32", "compute dtype of the weights")
    quantization: Literal["none", "int8", "4bit"] = param(
        "none", "load the base weights in int8 or 4-bit (QLoRA) with bitsandbytes; CUDA only")
    size_b: Optional[float] = param(None, "model size in billions of parameters for the learning-rate rule "
                                          "(unset: counted from the checkpoint)", gt=0)
    chat_template: Optional[str] = param(None, "Jinja chat template to use when the tokenizer has none "
                                               "(unset: rayalign's plain 'User:/Assistant:' template)")
    gradient_checkpointing: bool = param(False, "recompute activations in backward to save memory")


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = param(False, "train LoRA adapters instead of all weights (forced on by 4-bit QLoRA)")
    rank: int = param(64, "LoRA rank r", gt=0)
    alpha: int = param(16, "LoRA alpha (scaling = alpha / rank)", gt=0)
    dropout: float = param(0.05, "dropout on the LoRA input", ge=0.0, lt=1.0)
    target_modules: list[str] = param(["q_proj", "k_proj", "v_proj", "o_proj"],
                                      "module names that get adapters (attention projections by default)")


@dataclass(frozen=True)
class DeepSpeedConfig:
    stage: int = param(2, "ZeRO stage: 0 (plain DDP), 1, 2 or 3", ge=0, le=3)
    offload_optimizer: bool = param(False, "keep optimizer states in CPU memory (ZeRO-Offload)")
    offload_param: bool = param(False, "keep parameters in CPU memory (ZeRO-3 only)")
    precision: Literal["fp32", "bf16", "fp16"] = param("fp32", "training precision")

    def check(self) -> None:
        if self.offload_param and self.stage != 3:
            raise ConfigError(f"offload_param needs stage 3, got stage {self.stage}")


@dataclass(frozen=True)
class DataConfig:
    train_files: list[str] = param(DEFAULT_SFT_DATA, "JSON/JSONL/Parquet files or dataset folders of chats "
                                                    "(instruction/output, messages, conversations formats)")
    eval_fraction: float = param(0.05, "share of records held out for evaluation", ge=0.0, lt=1.0)
    max_length: int = param(256, "tokens per sequence; longer chats are truncated", gt=8)
    max_records: Optional[int] = param(None, "use at most this many records (unset: all)", gt=0)
    packing: bool = param(True, "pack several chats into one sequence (no padding waste)")


@dataclass(frozen=True)
class SFTConfig:
    num_workers: int = param(2, "Ray Train workers (data-parallel ranks)", gt=0)
    use_gpu: bool = param(False, "one GPU per worker")
    cpus_per_worker: int = param(1, "CPUs reserved per worker", gt=0)
    lr: Optional[float] = param(None, "learning rate (unset: by model size, 7B 1e-5, 13B 5.4e-6, 70B 1e-6)", gt=0)
    epochs: int = param(1, "passes over the training set", gt=0)
    max_steps: Optional[int] = param(None, "stop after this many optimizer steps (unset: epochs decide)", gt=0)
    micro_batch_size: int = param(4, "sequences per worker per forward pass", gt=0)
    grad_accum: int = param(1, "micro-batches per optimizer step", gt=0)
    warmup_ratio: float = param(0.03, "share of steps with linear learning-rate warm-up", ge=0.0, le=1.0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = param(1.0, "gradient clipping max norm", gt=0)
    save_every: int = param(50, "checkpoint every N optimizer steps", gt=0)
    eval_every: int = param(25, "evaluate held-out loss every N optimizer steps", gt=0)
    log_every: int = param(1, "write metrics every N optimizer steps", gt=0)
    export: bool = param(True, "write a merged Hugging Face model at the end")


@dataclass(frozen=True)
class RewardModelConfig:
    backbone: Optional[str] = param(None, "reward backbone folder (unset: the policy's model.path); a causal LM "
                                          "or a sentence encoder such as all-MiniLM-L6-v2")
    train_files: list[str] = param(["../shared/data/preference/llms-from-scratch/instruction-data-with-preference.json"],
                                   "preference files with chosen/rejected pairs")
    eval_fraction: float = param(0.1, "share of pairs held out for accuracy", gt=0.0, lt=1.0)
    max_length: int = param(256, "tokens per prompt+response", gt=8)
    lr: float = param(5e-5, "learning rate", gt=0)
    epochs: int = param(1, "passes over the pairs", gt=0)
    max_steps: Optional[int] = param(None, "stop after this many optimizer steps", gt=0)
    micro_batch_size: int = param(8, "pairs per worker per step", gt=0)
    num_workers: int = param(2, "Ray Train workers", gt=0)
    size_ratio_warn: float = param(1.5, "warn when reward-model params exceed the policy's by this factor", gt=0)
    refuse_oversize: bool = param(False, "refuse (instead of warn) when the size ratio is exceeded")


@dataclass(frozen=True)
class RolloutConfig:
    num_engines: int = param(1, "vLLM engine actors", gt=0)
    temperature: float = param(0.7, "sampling temperature", ge=0.0)
    top_p: float = param(0.9, "nucleus sampling mass", gt=0.0, le=1.0)
    repetition_penalty: float = param(1.2, "vLLM repetition penalty (1.0 = off)", gt=0.0)
    max_new_tokens: int = param(64, "response length cap in tokens", gt=0)
    max_prompt_tokens: int = param(128, "prompts longer than this are truncated from the left", gt=0)
    gpu_memory_utilization: float = param(0.3, "vLLM share of GPU memory (CUDA engines)", gt=0.0, le=1.0)
    kv_cache_gib: int = param(1, "vLLM KV-cache size on CPU engines (VLLM_CPU_KVCACHE_SPACE)", gt=0)


@dataclass(frozen=True)
class KLConfig:
    controller: Literal["fixed", "adaptive", "scheduled"] = param(
        "scheduled", "fixed coefficient, adaptive to a target KL, or the piecewise schedule below")
    coef: float = param(0.05, "KL coefficient (fixed controller; start value of the adaptive one)", ge=0.0)
    schedule: list[list[float]] = param([[0.2, 0.08], [0.8, 0.05], [1.0, 0.06]],
                                        "[progress_end, coef] pieces: 0.08 for the first 20%, 0.05 for the middle "
                                        "60%, 0.06 for the last 20%")
    target: float = param(6.0, "adaptive controller: target KL (nats per sequence)", gt=0)
    horizon: int = param(10000, "adaptive controller: horizon in samples", gt=0)
    estimator: Literal["k1", "k2", "k3"] = param("k1", "per-token KL estimator")
    mode: Literal["reward", "loss"] = param("reward", "KL as a per-token reward penalty or as a loss term")

    def check(self) -> None:
        ends = [piece[0] for piece in self.schedule]
        if any(len(piece) != 2 for piece in self.schedule):
            raise ConfigError("schedule pieces must be [progress_end, coef] pairs")
        if ends != sorted(ends) or not ends or ends[-1] != 1.0:
            raise ConfigError(f"schedule progress ends must increase and end at 1.0, got {ends}")


@dataclass(frozen=True)
class RewardMixConfig:
    rm_weight: float = param(0.6, "weight of the preference reward model score", ge=0.0)
    kl_weight: float = param(0.2, "weight of the KL penalty term", ge=0.0)
    length_weight: float = param(0.05, "weight of the length penalty", ge=0.0)
    repetition_weight: float = param(0.05, "weight of the repetition penalty", ge=0.0)
    safety_weight: float = param(0.1, "weight of the safety term", ge=0.0)
    length_threshold_chars: int = param(500, "responses longer than this many characters are penalised", gt=0)
    length_penalty: float = param(0.1, "penalty per 100 characters beyond the threshold", ge=0.0)
    safe_bonus: float = param(0.1, "safety term when no lexicon hit", ge=0.0)
    unsafe_penalty: float = param(1.0, "safety term magnitude (negative) on a lexicon hit", ge=0.0)
    enabled_terms: list[str] = param(["rm", "kl", "length", "repetition", "safety"],
                                     "reward terms switched on (add them one at a time)")
    reward_url: Optional[str] = param(None, "score with the HTTP reward service at this URL instead of an actor")
    reward_timeout_s: float = param(30.0, "HTTP reward request timeout", gt=0)
    reward_retries: int = param(3, "HTTP reward retries with exponential backoff", ge=0)


@dataclass(frozen=True)
class PPOConfig:
    prompt_files: list[str] = param(["../shared/data/sft/llms-from-scratch/instruction-data.json"],
                                    "files whose user turns become PPO prompts")
    steps: int = param(20, "PPO steps (rollout → update → sync)", gt=0)
    rollout_batch_size: int = param(32, "prompts per step", gt=0)
    mini_batch_size: int = param(16, "sequences per optimizer step", gt=0)
    ppo_epochs: int = param(4, "passes over each rollout batch", gt=0)
    lr: float = param(1e-6, "policy learning rate (10-20x below SFT)", gt=0)
    value_lr: float = param(5e-6, "value model learning rate", gt=0)
    clip_range: float = param(0.2, "policy ratio clip", gt=0)
    value_clip_range: float = param(0.2, "value prediction clip", gt=0)
    dual_clip: Optional[float] = param(None, "dual-clip bound c > 1 for negative advantages (unset: off)", gt=1.0)
    max_grad_norm: float = param(0.5, "gradient clipping max norm", gt=0)
    gamma: float = param(1.0, "discount", ge=0.0, le=1.0)
    lam: float = param(0.95, "GAE lambda", ge=0.0, le=1.0)
    whiten_advantages: bool = param(True, "normalise advantages to zero mean, unit variance per batch")
    policy_workers: int = param(1, "DeepSpeed ranks of the policy group", gt=0)
    value_workers: int = param(1, "DeepSpeed ranks of the value group", gt=0)
    colocate: bool = param(False, "place policy, value, reference and reward actors in one placement group")
    save_every: int = param(10, "checkpoint every N steps", gt=0)
    kl: KLConfig = section(KLConfig, "KL control")
    rollout: RolloutConfig = section(RolloutConfig, "vLLM sampling")
    reward: RewardMixConfig = section(RewardMixConfig, "mixed reward")

    def check(self) -> None:
        if self.rollout_batch_size % self.mini_batch_size:
            raise ConfigError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
                              f"mini_batch_size ({self.mini_batch_size})")


@dataclass(frozen=True)
class DPOConfig:
    train_files: list[str] = param(["../shared/data/preference/llms-from-scratch/instruction-data-with-preference.json"],
                                   "preference files with chosen/rejected pairs")
    loss: Literal["sigmoid", "ipo", "cdpo"] = param("sigmoid", "DPO loss variant")
    beta: float = param(0.1, "inverse temperature of the implicit reward", gt=0)
    label_smoothing: float = param(0.0, "cDPO label smoothing", ge=0.0, lt=0.5)
    lr: float = param(5e-7, "learning rate", gt=0)
    epochs: int = param(1, "passes over the pairs", gt=0)
    micro_batch_size: int = param(4, "pairs per worker per step", gt=0)
    reference: Literal["copy", "adapter_disabled"] = param(
        "copy", "frozen copy of the start model, or the base with LoRA adapters disabled")


@dataclass(frozen=True)
class CurateConfig:
    sources: list[dict] = param([], "source files, each {path, category} with category one of "
                                    "general/domain/multi_turn/edge")
    mix: dict[str, float] = param({"general": 0.4, "domain": 0.3, "multi_turn": 0.2, "edge": 0.1},
                                  "target share of each category")
    target_size: Optional[int] = param(None, "records in the curated set (unset: as many as the mix allows)", gt=0)
    min_rating: float = param(4.0, "drop records whose mean annotator rating is below this", ge=0.0)
    min_chars: int = param(10, "shortest response kept, in characters", ge=0)
    max_chars: int = param(2000, "longest response kept, in characters", gt=0)
    min_unique_token_ratio: float = param(0.70, "distinct tokens / tokens below this → drop", ge=0.0, le=1.0)
    max_similarity: float = param(0.85, "keep a record only if its cosine similarity to every kept one is below",
                                  gt=0.0, le=1.0)
    spot_check_fraction: float = param(0.30, "share of kept records sent to human spot-check", ge=0.0, le=1.0)
    lexicon_dir: str = param("../shared/data/lexicons", "folder of harmful-word lists")

    def check(self) -> None:
        if abs(sum(self.mix.values()) - 1.0) > 1e-6:
            raise ConfigError(f"mix shares must sum to 1, got {sum(self.mix.values()):.4f}")
        if self.min_chars >= self.max_chars:
            raise ConfigError(f"min_chars ({self.min_chars}) must be < max_chars ({self.max_chars})")


@dataclass(frozen=True)
class ServeConfig:
    host: str = param("127.0.0.1", "HTTP bind address")
    port: int = param(8000, "HTTP port", gt=0, lt=65536)
    route_prefix: str = param("/", "URL prefix of the reward app")
    num_replicas: int = param(1, "reward-model replicas", gt=0)
    max_batch_size: int = param(32, "requests batched together by @serve.batch", gt=0)
    batch_wait_timeout_s: float = param(0.01, "how long a batch waits to fill", ge=0.0)
    max_request_bytes: int = param(1_000_000, "larger request bodies get 413", gt=0)
    auth_token_env: str = param("RAYALIGN_REWARD_TOKEN", "env var holding the bearer token (unset var: no auth)")


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

    def check(self) -> None:
        if self.model.quantization == "4bit" and not self.lora.enabled:
            raise ConfigError("lora.enabled must be true with model.quantization=4bit (QLoRA trains adapters only)")
        if self.deepspeed.precision == "fp16" and self.model.dtype == "bfloat16":
            raise ConfigError("deepspeed.precision=fp16 conflicts with model.dtype=bfloat16")


def resolve_path(path: str | os.PathLike) -> Path:
    """Relative paths are taken from the current folder, then from the repository root (so the shipped
    recipes' '../shared/...' paths work from anywhere inside the checkout)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate.resolve()
    from_repo = REPO_ROOT / candidate
    return from_repo.resolve() if from_repo.exists() else candidate.resolve()


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


# Reported learning rates for full/LoRA SFT by model size (billions of parameters → lr). Between and beyond
# these points the rule interpolates linearly in log(size) → log(lr), i.e. a power law through the points.
SFT_LR_BY_SIZE: tuple[tuple[float, float], ...] = ((7.0, 1e-5), (13.0, 5.4e-6), (70.0, 1e-6))


# Extrapolating the power law to toy models would give absurd rates (0.15 at 0.4M parameters): clamp.
SFT_LR_BOUNDS = (1e-7, 1e-3)
# Bigger batches take slightly larger rates: square-root scaling relative to this many sequences per step.
SFT_LR_REFERENCE_BATCH = 64


def sft_learning_rate(size_b: float, explicit: float | None = None, global_batch: int | None = None,
                      points: tuple[tuple[float, float], ...] = SFT_LR_BY_SIZE) -> float:
    """Learning rate for a model of `size_b` billion parameters; an explicit value always wins.

    Log-log interpolation between the reported points; outside them the nearest segment's power law is
    extended, so smaller models get larger rates and larger ones smaller rates. With `global_batch`, the
    rate is scaled by sqrt(global_batch / 64). The result is clamped to SFT_LR_BOUNDS.
    """
    if explicit is not None:
        return explicit
    if size_b <= 0:
        raise ConfigError(f"model size must be > 0 billion parameters, got {size_b}")
    pts = sorted(points)
    x = math.log(size_b)
    if x <= math.log(pts[1][0]):
        (s0, l0), (s1, l1) = pts[0], pts[1]
    else:
        idx = next((i for i in range(1, len(pts)) if x <= math.log(pts[i][0])), len(pts) - 1)
        (s0, l0), (s1, l1) = pts[idx - 1], pts[idx]
    slope = (math.log(l1) - math.log(l0)) / (math.log(s1) - math.log(s0))
    lr = math.exp(math.log(l0) + slope * (x - math.log(s0)))
    if global_batch is not None:
        lr *= math.sqrt(global_batch / SFT_LR_REFERENCE_BATCH)
    return min(max(lr, SFT_LR_BOUNDS[0]), SFT_LR_BOUNDS[1])
