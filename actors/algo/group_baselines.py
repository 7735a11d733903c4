"""Critic-free advantages: several responses per prompt, each judged against the others in its group.

The rollout samples `group_size` responses per prompt, stored contiguously (rows g·G … g·G+G−1 answer the
same prompt). Each response gets one score (its whole return), the group supplies the baseline, and the
resulting sequence advantage applies to every response token. No value model is trained or queried.

    grpo                A_i = (R_i − mean_g) / (std_g + eps)          Shao et al. 2024 (DeepSeekMath);
                        std_g is the unbiased sample std, as in TRL's GRPOTrainer and OpenRLHF's group_norm
    rloo                A_i = R_i − mean of the other G−1 returns      Ahmadian et al. 2024 (RLOO)
                            = (R_i − mean_g) · G / (G − 1)
    reinforce_baseline  A_i = R_i − mean_g                              OpenRLHF's REINFORCE++-baseline; the
                                                                        caller whitens over the batch

A group whose returns are all equal has advantage 0 for every member under all three: it teaches nothing
(`zero_spread_share` reports how much of a batch that was).

R_i is the answer's task reward. A per-token KL penalty (ppo.kl.mode=reward) stays out of it and is added
after, unnormalised, as each token's penalty still to come in its answer (`advantages.rewards_to_go`), as
OpenRLHF's group_norm adds its KL after normalising the rewards: inside R it would be divided by the group's
spread, so the coefficient would lose its meaning, and where the answers tie on the task the KL's noise alone
would become full-size advantages.
"""

from __future__ import annotations

from typing import Callable

import torch

from actors.algo.registry import Registry

GroupBaseline = Callable[[torch.Tensor, float], torch.Tensor]  # returns [n_groups, G] → advantages [n_groups, G]
GROUP_BASELINES: Registry[GroupBaseline] = Registry("group baseline")


def _grouped(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    if returns.dim() != 1:
        raise ValueError(f"returns must be one score per response [B], got shape {tuple(returns.shape)}")
    if group_size < 2:
        raise ValueError(f"a group baseline needs at least 2 responses per prompt, got group_size={group_size}")
    if returns.numel() % group_size:
        raise ValueError(f"{returns.numel()} responses do not split into groups of {group_size}")
    return returns.view(-1, group_size)


@GROUP_BASELINES.register("grpo")
def grpo(groups: torch.Tensor, eps: float) -> torch.Tensor:
    centred = groups - groups.mean(dim=1, keepdim=True)
    return centred / (groups.std(dim=1, keepdim=True) + eps)


@GROUP_BASELINES.register("rloo")
def rloo(groups: torch.Tensor, eps: float) -> torch.Tensor:
    size = groups.shape[1]
    return (groups - groups.mean(dim=1, keepdim=True)) * (size / (size - 1))


@GROUP_BASELINES.register("reinforce_baseline")
def reinforce_baseline(groups: torch.Tensor, eps: float) -> torch.Tensor:
    return groups - groups.mean(dim=1, keepdim=True)


def group_advantages(returns: torch.Tensor, group_size: int, method: str, eps: float = 1e-4) -> torch.Tensor:
    """Sequence advantages [B] from sequence returns [B] (contiguous groups of `group_size`)."""
    return GROUP_BASELINES.get(method)(_grouped(returns, group_size), eps).reshape(-1)


def zero_spread_share(returns: torch.Tensor, group_size: int) -> float:
    """Share of groups whose members all scored the same (no learning signal for them)."""
    groups = _grouped(returns, group_size)
    return float((groups.max(dim=1).values == groups.min(dim=1).values).float().mean())


def spread_groups(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """[n_groups] bool: True where the group's answers did not all score the same, the groups DAPO's dynamic
    sampling keeps (exact equality: a reward differing in the last bit still ranks the answers)."""
    groups = _grouped(returns, group_size)
    return groups.max(dim=1).values != groups.min(dim=1).values


def per_token(sequence_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's value on every response token of that row, 0 on padding: [B] → [B, T]."""
    column = sequence_values[:, None]
    return torch.where(mask.bool(), column, torch.zeros_like(column))
