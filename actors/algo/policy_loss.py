"""PPO's clipped surrogate policy loss (Schulman et al. 2017), with optional dual clip (Ye et al. 2020).

Inputs are per-token [B, T]: logp (current policy, carries the gradient), old_logp (the policy that
sampled, no gradient), advantages, and mask (response tokens). How the per-token losses become one
number is a loss aggregation (actors/algo/loss_aggregation.py); optional token weights carry a rollout
correction (actors/algo/rollout_correction.py).
"""

from __future__ import annotations

from typing import Callable

import torch

from actors.algo.loss_aggregation import LOSS_AGGREGATIONS
from actors.algo.masked import masked_mean
from actors.algo.registry import Registry

POLICY_LOSSES: Registry[Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]] = Registry("policy loss")


@POLICY_LOSSES.register("ppo_clip")
def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    dual_clip: float | None = None,
    normalizer: float | None = None,
    *,
    aggregation: str = "token-mean",
    max_response_len: int | None = None,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Aggregate of w·max(−A·r, −A·clip(r, 1−ε, 1+ε)) with r = exp(logp − old_logp) → (loss, stats).

    dual_clip (c > 1): for A < 0 the per-token loss is further capped at −c·A, so a token whose ratio
    has exploded cannot produce an unbounded loss.
    aggregation: a LOSS_AGGREGATIONS name; the default token-mean is the masked mean over tokens.
    normalizer: the aggregation's unit count (tokens for token-mean, sequences for the seq-mean modes)
    over the whole batch, all shards together; None uses this call's own count. With it, the shard
    losses sum to the whole-batch loss.
    max_response_len: the constant L_max of seq-mean-token-sum-norm (Dr. GRPO).
    token_weights w [B, T]: per-token multiplier of the loss after clipping, e.g. truncated importance
    weights (rollout_correction.py); used detached, 1 when None.

    stats (detached 0-dim tensors, local to this call's tokens):
      clip_frac  share of response tokens where the clipped term was the one used (zero gradient)
      approx_kl  masked mean of ½(logp − old_logp)², the k2 estimate of KL(old ‖ new), over the tokens whose
                 log-ratio is finite
      dropped_share  share of tokens with logp = −inf: a truncated (top_p) distribution of the updated policy
                 no longer holds them. Their ratio is 0 and their loss finite, with no gradient.
      ratio_mean masked mean of r
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        capped = torch.minimum(per_token, -dual_clip * advantages)
        per_token = torch.where(advantages < 0, capped, per_token)

    if token_weights is not None:
        # 1 off the mask: a NaN/inf weight on padding would make that token's zero gradient NaN (0 · NaN).
        weights = torch.where(mask.bool(), token_weights.detach(), torch.ones_like(per_token))
        per_token = per_token * weights

    loss = LOSS_AGGREGATIONS.get(aggregation).reduce(per_token, mask, normalizer, max_response_len)
    with torch.no_grad():
        finite = torch.isfinite(log_ratio)
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            "approx_kl": masked_mean(0.5 * torch.where(finite, log_ratio, 0.0) ** 2, mask.bool() & finite),
            "dropped_share": masked_mean(torch.isneginf(logp).to(logp.dtype), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats
