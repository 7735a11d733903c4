"""PPO's clipped value loss: the critic may not move further than clip_range from the values it had
when the rollout was scored, mirroring the policy's ratio clip."""

from __future__ import annotations

import torch

from actors.algo.masked import masked_mean


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """½ · masked mean of max((v − R)², (v_old + clip(v − v_old, ±ε) − R)²) → (loss, stats).

    All inputs [B, T]; values carries the gradient. normalizer: see masked_mean.
    stats (detached 0-dim tensors): clip_frac, the share of response tokens where the clipped error
    was the larger one (those tokens give no gradient).
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask, normalizer=normalizer)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)}
    return loss, stats
