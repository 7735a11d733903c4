"""Reductions over the tokens a mask selects (mask: 1/True = counts, 0/False = padding or prompt).

Convention for empty selections: a mean over zero tokens is 0 and a variance over fewer tokens than the
statistic needs is 0, never NaN. An all-padding micro-batch is legal in sharded training and must not
poison the sum of shard losses.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is set; x and mask broadcastable. dim=None → 0-dim tensor."""
    # where, not x * mask: padding may hold inf/NaN (e.g. exp of a garbage log-ratio) and inf * 0 = NaN.
    selected = torch.where(mask.bool(), x, torch.zeros_like(x))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(
    x: torch.Tensor,
    mask: torch.Tensor,
    dim: int | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Masked sum divided by the masked count (0 where the count is 0).

    normalizer: divide by this number instead of the local count. Pass the token count of the whole
    batch when computing a loss on one shard, so that summing the shard losses equals the whole-batch
    loss (a per-shard mean would weight short shards too heavily). A normalizer below 1 counts as 1: it is 0
    only where the whole batch selects nothing (every token dropped by a rollout correction), and then every
    shard's sum is 0 too.
    """
    total = masked_sum(x, mask, dim)
    if normalizer is not None:
        return total / max(float(normalizer), 1.0)
    count = masked_sum(torch.ones_like(x), mask, dim)
    # clamp keeps 0/0 out; the numerator is already 0 wherever the count is 0.
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of all selected elements (0-dim). Bessel-corrected when unbiased; 0 if too few elements."""
    mean = masked_mean(x, mask)
    count = masked_sum(torch.ones_like(x), mask)
    squared_deviation = masked_sum((x - mean) ** 2, mask)
    dof = count - 1 if unbiased else count
    return torch.where(dof > 0, squared_deviation / dof.clamp(min=1), torch.zeros_like(squared_deviation))


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the selected elements; masked positions come back as 0.

    shift_mean=False only rescales (keeps the mean), the usual choice for rewards as opposed to
    advantages.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))
