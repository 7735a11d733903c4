"""Advantage estimators over response tokens.

Every estimator has the signature (token_rewards [B, T], values [B, T], mask [B, T], gamma, lam)
→ (advantages [B, T], returns [B, T]). mask marks response tokens; the recursions run over those
positions only, stepping over masked gaps as if they were not there, and the last response token of a
row is terminal (the value after it is 0). Masked positions come back as 0 in both outputs, so left
padding, right padding and padding in the middle give the same numbers on the response tokens.
Whitening the advantages is the caller's job (masked_whiten).
"""

from __future__ import annotations

from typing import Callable

import torch

from actors.algo.registry import Registry

AdvantageEstimator = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor]
]
ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator")


def rewards_to_go(x: torch.Tensor, mask: torch.Tensor, discount: float = 1.0) -> torch.Tensor:
    """y_t = x_t + discount · y_(next response position after t), over response positions; 0 elsewhere."""
    selected = mask.bool()
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[:, 0])
    for t in reversed(range(x.shape[1])):
        running = torch.where(selected[:, t], x[:, t] + discount * running, running)
        out[:, t] = torch.where(selected[:, t], running, torch.zeros_like(running))
    return out


def _next_response_value(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values at the next response position after t (0 when t is the row's last response token)."""
    selected = mask.bool()
    out = torch.zeros_like(values)
    upcoming = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        out[:, t] = upcoming
        upcoming = torch.where(selected[:, t], values[:, t], upcoming)
    return out


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    δ_t = r_t + γ V_(t+1) − V_t,  A_t = δ_t + γλ A_(t+1),  returns_t = A_t + V_t,
    where t+1 means the next response token. λ=0 gives the one-step TD error, λ=1 the discounted
    return minus V_t.
    """
    selected = mask.bool()
    deltas = token_rewards + gamma * _next_response_value(values, mask) - values
    advantages = rewards_to_go(deltas, mask, gamma * lam)
    returns = torch.where(selected, advantages + values, torch.zeros_like(values))
    return advantages, returns


@ADVANTAGE_ESTIMATORS.register("reinforce")
def reinforce(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE without a baseline: advantages = returns = discounted reward-to-go. values, lam unused."""
    returns = rewards_to_go(token_rewards, mask, gamma)
    return returns, returns.clone()
