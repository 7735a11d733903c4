"""Time and money of a plan (jobs.plan): each stage's work in FLOPs, its wall hours on the stage's GPUs at a
model-FLOPs utilisation (MFU), its GPU-hours, and their cost at a price per GPU-hour.

Work per token, N = model parameters (Kaplan et al. 2020: 2·N a forward, twice that a backward):

  forward                          2·N
  training, full fine-tuning       6·N   forward 2·N + backward 4·N (activation and weight gradients, 2·N each)
  training, LoRA / QLoRA           4·N   the frozen base needs no weight gradients; the adapters' are negligible
  gradient checkpointing           +2·N  the forward runs again inside the backward
  rollout (vLLM generation)        2·N per prompt and generated token, at the device's decode MFU: decoding reads
                                   every weight per token, so it is bound by memory bandwidth, not FLOPs

Work per stage, with T(files) = the data's tokens (characters / 4, each sequence capped at the stage's max length;
a preference pair is two sequences, the prompt with each answer), or profile.sft_tokens / preference_tokens:

  sft           T(data.train_files) × sft.epochs                                         training
  reward_model  T(reward_model.train_files) × epochs                                     training
  dpo           T(dpo.train_files) × epochs: training, plus the reference's forward
                (a stage's max_steps caps these at max_steps × micro-batch × accumulation × workers items)
  ppo           per step, S = sequences per step, t = prompt + response tokens, steps × (rollout of S·t at decode
                MFU; forwards over S·t of the policy's old log-probs, the reference, the reward model (rm_source
                model) and the value model (gae); training over S·t × ppo_epochs of the policy and the value model)

A stage runs on the GPUs its roles take (ranks × gpus_per_rank): wall hours = FLOPs / (GPUs × peak × MFU),
GPU-hours = GPUs × wall hours, cost = GPU-hours × price. PPO's phases run in turn, each on the GPUs of the roles
computing in it (ppo_phase_seconds), so its wall hours are their sum and every reserved GPU is paid for all of it.
A CPU-only profile is costed on the hosts' cores instead
(0.05 TFLOP/s each at MFU 0.14, measured on the tiny model's SFT), for the hours; it has no GPU price.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.config import Config
from common.errors import ConfigError
from common.records import read_many

CHARS_PER_TOKEN = 4.0  # English text in a BPE vocabulary; the plan has no tokenizer for a model it only sizes
SECONDS_PER_HOUR = 3600.0
CPU_PEAK_TFLOPS_PER_CORE = 0.05  # fp32 AVX2 FMA at ~3 GHz: 2 units × 8 lanes × 2 FLOPs × 3e9 ≈ 0.1; half of it
# in sustained matrix products. Measured: rayalign's one-worker SFT of the 0.4M tiny model runs 5,233 tokens/s on 2
# cores (README, bench/peers.py) = 6 × 444,352 × 5,233 = 14.0 GFLOP/s, 0.14 of this peak.
CPU_MFU = 0.14


@dataclass(frozen=True)
class Device:
    peak_tflops: float  # dense 16-bit tensor throughput
    mfu: float  # share of it training reaches
    decode_mfu: float  # share of it vLLM decoding reaches
    price_per_hour: float  # USD per GPU-hour
    source: str


# Defaults for the GPUs of the shipped profiles (profile.mfu, profile.decode_mfu and profile.price_per_gpu_hour
# override them). Peaks are NVIDIA's dense bf16 figures; MFU is what DeepSpeed ZeRO fine-tuning of 7B models
# commonly reports (30-45%); prices are USD on-demand rates as of 2024, not quotes.
DEVICES = {
    "A100-80GB": Device(312.0, 0.40, 0.10, 2.98, "the seed's figure: $2,000 a week for 4 cards (2024 cloud list "
                                                  "prices run $1.8-5)"),
    "A100-40GB": Device(312.0, 0.40, 0.10, 2.50, "2024 cloud list prices run $1.3-4"),
    "H100-80GB": Device(989.0, 0.35, 0.08, 4.50, "2024 cloud list prices run $2.5-8; rayalign's SFT engine measured "
                                                  "0.16-0.26 MFU at 0.5B, README"),
    "RTX4090-24GB": Device(165.0, 0.30, 0.10, 0.40, "a rented card on community clouds, 2024; owned, it costs the "
                                                     "power"),
}


@dataclass(frozen=True)
class StageCost:
    stage: str
    tokens: float  # tokens the stage trains on (or, for ppo, rolls out)
    flops: float
    gpus: float  # 0 on a CPU-only profile
    wall_hours: float
    gpu_hours: float
    cost: float  # USD; 0 on a CPU-only profile


# ---- FLOPs per token (pure) ------------------------------------------------------------------------------
def training_flops_per_token(params: float, lora: bool, checkpointing: bool) -> float:
    return params * ((4.0 if lora else 6.0) + (2.0 if checkpointing else 0.0))


def forward_flops_per_token(params: float) -> float:
    return 2.0 * params


# ---- data sizes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSize:
    tokens: float
    items: int  # chats, or preference pairs

    def per_item(self) -> float:
        return self.tokens / max(self.items, 1)


def data_size(files: list[str], max_length: int, max_records: int | None = None) -> DataSize:
    """Tokens a stage reads from a data set at CHARS_PER_TOKEN, each sequence capped at max_length (training
    truncates): a chat is one sequence, a preference pair two (the prompt with each answer)."""
    total, items = 0.0, 0
    for record in read_many(files, max_records):
        prompt = sum(len(m.get("content", "")) for m in record.get("messages", []))
        answers = [len(record[key]) for key in ("chosen", "rejected") if key in record] or [0]
        total += sum(min((prompt + answer) / CHARS_PER_TOKEN, max_length) for answer in answers)
        items += 1
    return DataSize(total, items)


def trained_tokens(size: DataSize, section, given: float | None) -> float:
    """The tokens a training stage reads: its data `epochs` times (profile.sft_tokens / preference_tokens stand for
    the data, when set), or fewer when its max_steps ends it first (items per step: micro-batch × accumulation
    × workers)."""
    tokens = (given if given is not None else size.tokens) * section.epochs
    if section.max_steps is not None:
        per_step = section.micro_batch_size * section.grad_accum * section.num_workers
        tokens = min(tokens, section.max_steps * per_step * size.per_item())
    return tokens


def plan_tokens(cfg: Config, stages: list[str]) -> dict[str, float]:
    """Each planned training stage's tokens."""
    prof, tokens = cfg.profile, {}
    if "sft" in stages:
        tokens["sft"] = trained_tokens(data_size(cfg.data.train_files, cfg.data.max_length, cfg.data.max_records),
                                       cfg.sft, prof.sft_tokens)
    for stage, section in (("reward_model", cfg.reward_model), ("dpo", cfg.dpo)):
        if stage in stages:
            size = data_size(section.train_files, section.max_length, section.max_records)
            tokens[stage] = trained_tokens(size, section, prof.preference_tokens)
    return tokens


# ---- the stages ------------------------------------------------------------------------------------------
def stage_work(cfg: Config, stage: str, params: float, tokens: dict[str, float]) -> tuple[float, float, float]:
    """(tokens, training-rate FLOPs, decode-rate FLOPs) of one stage; `tokens` holds each data set's size."""
    lora, checkpointing = cfg.lora.enabled, cfg.model.gradient_checkpointing
    train = training_flops_per_token(params, lora, checkpointing)
    forward = forward_flops_per_token(params)
    if stage == "sft":
        n = tokens["sft"]
        return n, n * train, 0.0
    if stage == "reward_model":
        n = tokens["reward_model"]
        return n, n * training_flops_per_token(params, cfg.reward_model.lora, checkpointing), 0.0
    if stage == "dpo":
        n = tokens["dpo"]
        return n, n * (train + forward), 0.0
    if stage == "ppo":
        return ppo_work(cfg, params)
    return 0.0, 0.0, 0.0


def ppo_work(cfg: Config, params: float) -> tuple[float, float, float]:
    ppo = cfg.ppo
    per_step = ppo.sequences_per_step * (ppo.rollout.max_prompt_tokens + ppo.rollout.max_new_tokens)
    n = per_step * ppo.steps
    forward = forward_flops_per_token(params)
    forwards = 2 + (ppo.reward.rm_source == "model") + ppo.uses_value_model  # old log-probs, reference, ...
    checkpointing = cfg.model.gradient_checkpointing
    # The policy trains as configured (LoRA or not); a value model always trains in full (actors/value.py).
    train = training_flops_per_token(params, cfg.lora.enabled, checkpointing) + \
        (training_flops_per_token(params, False, checkpointing) if ppo.uses_value_model else 0.0)
    return n, n * (forwards * forward + ppo.ppo_epochs * train), n * forward


def ppo_phase_seconds(cfg: Config, params: float, gpus: float, device: Device) -> dict[str, float]:
    """Seconds of each PPO phase over the run, on the GPUs of the roles that compute in it (the phases run in
    turn; roles of one phase at once): rollout on the engines at decode MFU; the policy's old log-probs beside the
    reference (on the policy's GPUs too when it is the policy with adapters disabled); the reward model; the value
    estimates; the policy's and the value model's training side by side. Dividing all the work by every reserved
    GPU instead made a 16-GPU run look 3x shorter: most GPUs wait while one role computes. A role with a fraction
    of a GPU (colocated) has a whole one while its phase runs alone, at most the reserved ones."""
    ppo, g = cfg.ppo, cfg.ppo.gpus_per_actor
    n = ppo.sequences_per_step * (ppo.rollout.max_prompt_tokens + ppo.rollout.max_new_tokens) * ppo.steps
    forward = forward_flops_per_token(params) * n
    checkpointing = cfg.model.gradient_checkpointing

    def rate(ranks: int, mfu: float) -> float:
        role_gpus = ranks * g if g >= 1 else min(max(ranks * g, 1.0), gpus)
        return role_gpus * device.peak_tflops * 1e12 * mfu

    policy = rate(ppo.policy_workers, device.mfu)
    reference_on_policy = ppo.reference == "adapter_disabled" and cfg.lora.enabled
    phases = {"rollout": forward / rate(ppo.rollout.num_engines, device.decode_mfu),
              "log-probs": 2 * forward / policy if reference_on_policy else
              max(forward / policy, forward / rate(1, device.mfu))}
    if ppo.reward.rm_source == "model":
        phases["reward"] = forward / rate(1, device.mfu)
    train = [n * ppo.ppo_epochs * training_flops_per_token(params, cfg.lora.enabled, checkpointing) / policy]
    if ppo.uses_value_model:
        value = rate(ppo.value_workers, device.mfu)
        phases["values"] = forward / value
        train.append(n * ppo.ppo_epochs * training_flops_per_token(params, False, checkpointing) / value)
    phases["train"] = max(train)
    return phases


def device_for(cfg: Config) -> Device | None:
    """The profile's GPU with the config's overrides; None on a CPU-only profile. An unknown GPU must bring its
    own peak, MFU and price."""
    prof = cfg.profile
    if prof.gpu is None:
        return None
    known = DEVICES.get(prof.gpu)
    missing = [key for key in ("peak_tflops", "mfu", "decode_mfu", "price_per_gpu_hour")
               if getattr(prof, key) is None] if known is None else []
    if missing:
        raise ConfigError(f"profile.gpu {prof.gpu!r} has no known {', '.join(missing)}: set profile."
                          f"{missing[0]} (known devices: {', '.join(DEVICES)})")
    base = known or Device(0.0, 0.0, 0.0, 0.0, "")
    return Device(prof.peak_tflops or base.peak_tflops, prof.mfu or base.mfu, prof.decode_mfu or base.decode_mfu,
                  base.price_per_hour if prof.price_per_gpu_hour is None else prof.price_per_gpu_hour,
                  "profile" if known is None else base.source)


def stage_cost(cfg: Config, stage: str, gpus: float, params: float, tokens: dict[str, float],
               device: Device | None) -> StageCost:
    n, train_flops, decode_flops = stage_work(cfg, stage, params, tokens)
    if device is None or gpus == 0:  # on the hosts' cores
        hours = (train_flops + decode_flops) / (cpu_rate(cfg) * (cfg.profile.mfu or CPU_MFU)) / SECONDS_PER_HOUR
        return StageCost(stage, n, train_flops + decode_flops, 0.0, hours, 0.0, 0.0)
    if stage == "ppo":
        seconds = sum(ppo_phase_seconds(cfg, params, gpus, device).values())
    else:
        peak = gpus * device.peak_tflops * 1e12
        seconds = train_flops / (peak * device.mfu) + decode_flops / (peak * device.decode_mfu)
    hours = seconds / SECONDS_PER_HOUR
    return StageCost(stage, n, train_flops + decode_flops, gpus, hours, gpus * hours, gpus * hours *
                     device.price_per_hour)


def cpu_rate(cfg: Config) -> float:
    """FLOP/s of the hosts' cores (ray.num_cpus per node, else this machine's count)."""
    cores = cfg.ray.num_cpus or os.cpu_count() or 1
    return cfg.profile.nodes * cores * CPU_PEAK_TFLOPS_PER_CORE * 1e12
