"""Losses on preference pairs: DPO and its variants for the policy, Bradley–Terry for reward models.

Sequence log-probs are sums over response tokens (sequence_logprob). For DPO the implicit reward
margin is h = (π_chosen − π_rejected) − (ref_chosen − ref_rejected), all [B].
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from actors.algo.masked import masked_sum
from actors.algo.registry import Registry

DPO_LOSSES: Registry[Callable[[torch.Tensor, float, float], torch.Tensor]] = Registry("dpo loss")


@DPO_LOSSES.register("sigmoid")
def dpo_sigmoid(margin: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """Standard DPO (Rafailov et al. 2023): −log σ(β h), per pair."""
    return -F.logsigmoid(beta * margin)


@DPO_LOSSES.register("cdpo")
def dpo_conservative(margin: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """Conservative DPO: labels flipped with probability ε, −(1−ε) log σ(β h) − ε log σ(−β h)."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(
        -beta * margin
    )


@DPO_LOSSES.register("ipo")
def dpo_ipo(margin: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO (Azar et al. 2023): (h − 1/(2β))², a squared loss that does not push h to infinity."""
    return (margin - 1.0 / (2.0 * beta)) ** 2


def sequence_logprob(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of per-token log-probs over response tokens: [B, T] → [B]."""
    return masked_sum(token_logp, mask, dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    variant: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family loss on sequence log-probs [B] → (mean loss, chosen_rewards [B], rejected_rewards [B]).

    The rewards are the implicit ones, β·(policy − reference), detached, for logging margins and
    accuracy. label_smoothing is used by "cdpo" only.
    """
    if beta <= 0:
        raise ValueError(f"DPO beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"DPO label_smoothing must be in [0, 0.5), got {label_smoothing}")
    margin = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    loss = DPO_LOSSES.get(variant)(margin, beta, label_smoothing).mean()
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return loss, chosen_rewards, rejected_rewards


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward-model pairwise loss: mean of −log σ(chosen − rejected) over pairs [B]."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs where chosen scores strictly above rejected (ties count as wrong); 0.0 if empty."""
    if chosen.numel() == 0:
        return 0.0
    return (chosen > rejected).double().mean().item()
