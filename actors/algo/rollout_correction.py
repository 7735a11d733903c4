"""Rollout correction: the tokens were sampled by the rollout engine, not by the policy PPO calls "old".

PPO's old log-probs (π_old, recomputed by the trainer) differ from the log-probs of the distribution that
actually sampled each token (π_behaviour, reported by vLLM with top_p and repetition penalty applied, in
its own kernels and precision). Per token, with everything [B, T]:

    ρ = exp(old_logp − behaviour_logp) = π_old / π_behaviour

`behaviour_mismatch` measures the gap; the ROLLOUT_CORRECTIONS variants act on it:
    none  nothing changes
    tis   truncated importance sampling: the per-token loss is weighted by min(ρ, C), detached
          (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training";
          OpenRLHF's and veRL's TIS)
    mask  tokens with ρ outside [1/C, C] leave the loss mask (IcePop-style, Ling team 2025, which uses an
          asymmetric band [α, β]). Compute the normaliser from the returned mask to average over the
          kept tokens, or from the input mask to keep IcePop's denominator.
Each takes (old_logp, behaviour_logp, mask, cap) and returns a RolloutCorrection; pass its token_weights
and mask to clipped_policy_loss.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from actors.algo.kl import kl_k1, kl_k3
from actors.algo.masked import masked_mean
from actors.algo.registry import Registry

# Band for the logged share of strongly mismatched tokens: a factor of 2 either way, fixed so the metric
# is comparable across runs whatever cap the correction uses.
MISMATCH_BAND = (0.5, 2.0)


class RolloutCorrection(NamedTuple):
    token_weights: torch.Tensor | None  # [B, T] detached multiplier, 1 off the mask; None means all 1
    mask: torch.Tensor  # [B, T] loss mask to train on
    affected_share: torch.Tensor  # 0-dim: share of the input mask's tokens truncated or dropped


Corrector = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], RolloutCorrection]
ROLLOUT_CORRECTIONS: Registry[Corrector] = Registry("rollout correction")


def behaviour_ratio(old_logp: torch.Tensor, behaviour_logp: torch.Tensor) -> torch.Tensor:
    """ρ = exp(old_logp − behaviour_logp), [B, T], detached: a correction weight, never a gradient path."""
    return torch.exp(old_logp.detach() - behaviour_logp.detach())


@torch.no_grad()
def behaviour_mismatch(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """How far π_old is from π_behaviour on the sampled tokens; detached 0-dim tensors, masked means.

    behaviour_kl        k3 estimate of KL(behaviour ‖ old): ρ − 1 − log ρ (unbiased and ≥ 0 per token,
                        since the tokens were sampled from π_behaviour)
    behaviour_kl_k1     behaviour_logp − old_logp (unbiased, can be negative per token)
    ratio_outside_share share of tokens with ρ outside MISMATCH_BAND [0.5, 2]
    ratio_mean          mean ρ (1 in expectation under π_behaviour)
    """
    ratio = behaviour_ratio(old_logp, behaviour_logp)
    low, high = MISMATCH_BAND
    outside = (ratio < low) | (ratio > high)
    return {
        "behaviour_kl": masked_mean(kl_k3(behaviour_logp, old_logp), mask),
        "behaviour_kl_k1": masked_mean(kl_k1(behaviour_logp, old_logp), mask),
        "ratio_outside_share": masked_mean(outside.to(ratio.dtype), mask),
        "ratio_mean": masked_mean(ratio, mask),
    }


def _check_cap(cap: float) -> None:
    if not cap > 1.0:
        raise ValueError(f"rollout correction cap must be > 1, got cap={cap}")


@ROLLOUT_CORRECTIONS.register("none")
def no_correction(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> RolloutCorrection:
    """The mask as given, no weights; cap is ignored."""
    return RolloutCorrection(None, mask, torch.zeros((), dtype=old_logp.dtype, device=old_logp.device))


@ROLLOUT_CORRECTIONS.register("tis")
def truncated_importance_sampling(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> RolloutCorrection:
    """Weights min(ρ, C) on the mask (1 elsewhere); affected_share = share with ρ > C (truncated)."""
    _check_cap(cap)
    ratio = behaviour_ratio(old_logp, behaviour_logp)
    # 1 off the mask: padding may hold NaN log-probs, and a NaN weight there would turn the zero gradient
    # of a padding token into NaN (0 · NaN) in the backward pass.
    weights = torch.where(mask.bool(), ratio.clamp(max=cap), torch.ones_like(ratio))
    return RolloutCorrection(weights, mask, masked_mean((ratio > cap).to(ratio.dtype), mask))


@ROLLOUT_CORRECTIONS.register("mask")
def ratio_mask(
    old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor, cap: float
) -> RolloutCorrection:
    """Mask without tokens whose ρ lies outside [1/C, C] (bounds kept); affected_share = share dropped."""
    _check_cap(cap)
    ratio = behaviour_ratio(old_logp, behaviour_logp)
    outside = (ratio < 1.0 / cap) | (ratio > cap)
    kept = mask.bool() & ~outside
    return RolloutCorrection(None, kept.to(mask.dtype), masked_mean(outside.to(ratio.dtype), mask))
