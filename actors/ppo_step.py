"""The typed results PPO's phases hand each other (actors/ppo_loop.py), and the state of one step that holds them."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from actors.protocol import TokenBatch


@dataclass
class Rollout:
    prompts: list[list[dict]]
    prompt_keys: list[str]
    responses: list[str]
    tokens: TokenBatch
    behaviour: torch.Tensor  # [B, L-1] the engine's log-prob of each sampled token under the distribution that drew it
    generated_tokens: int
    finished: float  # share of responses that ended with EOS
    columns: list[dict] = field(default_factory=list)  # each prompt record's other fields (reward functions)
    sources: list[str] = field(default_factory=list)  # each prompt's file:line


@dataclass
class Scores:
    rm: torch.Tensor  # [B] preference scores (zeros when the rm term is off)
    functions: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] per plug-in reward term
    errors: dict[str, int] = field(default_factory=dict)  # records a function failed on, scored 0 (errors=zero)


@dataclass
class LogProbs:
    old: torch.Tensor  # [B, L-1] the policy before the update, as PPO's ratio takes it (ppo.trainer_logprobs)
    ref: torch.Tensor  # [B, L-1] the frozen reference at the rollout temperature
    kl_old: torch.Tensor  # [B, L-1] the policy before the update at the rollout temperature: the KL's side
    dropped_share: float = 0.0  # response tokens whose processed π_old fell outside the trainer's top-p cut


@dataclass
class Advantages:
    advantages: torch.Tensor
    returns: torch.Tensor
    token_rewards: torch.Tensor
    seq_kl: torch.Tensor  # [B] with the configured estimator
    seq_kl_k3: float  # batch mean with k3 (non-negative; logged for comparison whatever the estimator)
    kl_coef: float
    kl_loss_coef: float
    reward_metrics: dict


@dataclass
class StepResult:
    metrics: dict
    alarms: list = field(default_factory=list)
    stop: bool = False


@dataclass
class StepState:
    """What the phases of one step hand each other: each phase's result lands in the field named after it."""
    step: int
    progress: float  # share of the run done before this step (the KL schedule reads it)
    timings: dict[str, float] = field(default_factory=dict)
    rollout: Rollout | None = None
    score: Scores | None = None
    reference: LogProbs | None = None
    values: torch.Tensor | None = None  # [B, L-1]
    advantages: Advantages | None = None
    train: dict | None = None
    sync: int | None = None  # tensors loaded per engine
    monitor: StepResult | None = None


@contextlib.contextmanager
def timed(timings: dict, phase: str):
    """Adds the block's wall time, in seconds, to timings[phase]."""
    started = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - started
