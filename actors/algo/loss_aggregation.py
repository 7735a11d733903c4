"""How per-token losses [B, T] become one scalar, so that shards of one optimizer step sum exactly.

Every mode has the form  loss = Σ_i c_i / (N · s):  c_i is row i's contribution, N the count of the mode's
units (tokens or sequences) over the WHOLE batch of the step (all ranks), s a constant scale.
With x the per-token loss, n_i the number of response tokens of row i, S the number of sequences (rows
with at least one response token) and L_max a fixed maximum response length:

    token-mean               Σ_i Σ_t x_it / Σ_i n_i            c_i = Σ_t x_it       N = tokens     s = 1
    seq-mean-token-mean      (1/S) Σ_i (Σ_t x_it / n_i)        c_i = Σ_t x_it / n_i N = sequences  s = 1
    seq-mean-token-sum       (1/S) Σ_i Σ_t x_it                c_i = Σ_t x_it       N = sequences  s = 1
    seq-mean-token-sum-norm  Σ_i Σ_t x_it / (S · L_max)        c_i = Σ_t x_it       N = sequences  s = L_max

The names are veRL's (`agg_loss` in verl/trainer/ppo/core_algos.py). token-mean is DAPO's token-level
loss (Yu et al. 2025); seq-mean-token-mean is the original GRPO objective (Shao et al. 2024), which gives a
short response's tokens more weight than a long one's; seq-mean-token-sum-norm is Dr. GRPO (Liu et al.
2025, "Understanding R1-Zero-Like Training"), whose constant normaliser removes that length bias. veRL
divides that mode by the padded width T only; Dr. GRPO's objective keeps the 1/G mean over responses, as here.

Because c_i depends on row i alone and N on the whole batch, a shard that divides its own Σ_i c_i by the
all-reduced N gets exactly its share: the shard losses sum to the whole-batch loss, gradients included.
A row without response tokens is no sequence (it may be padding that balances shards) and adds 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from actors.algo.masked import masked_mean, masked_sum
from actors.algo.registry import Registry


@dataclass(frozen=True)
class LossAggregation:
    """One aggregation mode: row contributions, the unit its normaliser counts, and whether L_max scales it.

    Sharded use: `units(mask)` on each shard, all-reduce (sum) to N, then `reduce(..., global_units=N)`.
    """

    name: str
    row_contribution: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, T], mask [B, T]) → [B]
    counts_sequences: bool  # False: N counts response tokens
    divides_by_max_len: bool = False

    def units(self, mask: torch.Tensor) -> float:
        """This shard's count of the normaliser's unit (tokens or sequences); mask [B, T]."""
        selected = mask.bool()
        return float(selected.any(dim=-1).sum() if self.counts_sequences else selected.sum())

    def reduce(
        self,
        per_token: torch.Tensor,
        mask: torch.Tensor,
        global_units: float | None = None,
        max_response_len: int | None = None,
    ) -> torch.Tensor:
        """0-dim loss Σ_i c_i / (N · s) from per_token [B, T] and mask [B, T].

        global_units: N summed over all shards of the step; None uses this call's own count (one shard).
        max_response_len: L_max, required by seq-mean-token-sum-norm and ignored by the other modes.
        An empty selection gives 0, never NaN.
        """
        units = self.units(mask) if global_units is None else global_units
        # N = 0 only when nothing is selected anywhere, and then every c_i is 0 too: 0 / 1 instead of 0 / 0.
        denominator = max(units, 1.0) * self._scale(max_response_len)
        return self.row_contribution(per_token, mask).sum() / denominator

    def _scale(self, max_response_len: int | None) -> float:
        if not self.divides_by_max_len:
            return 1.0
        if max_response_len is None or max_response_len < 1:
            raise ValueError(
                f"loss aggregation {self.name!r} needs max_response_len ≥ 1 (the constant L_max, usually the "
                f"rollout's max new tokens), got {max_response_len}"
            )
        return float(max_response_len)


def _token_sum(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_sum(per_token, mask, dim=-1)


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(per_token, mask, dim=-1)


LOSS_AGGREGATIONS: Registry[LossAggregation] = Registry("loss aggregation")


def _register(mode: LossAggregation) -> None:
    LOSS_AGGREGATIONS.register(mode.name)(mode)


_register(LossAggregation("token-mean", _token_sum, counts_sequences=False))
_register(LossAggregation("seq-mean-token-mean", _token_mean, counts_sequences=True))
_register(LossAggregation("seq-mean-token-sum", _token_sum, counts_sequences=True))
_register(LossAggregation("seq-mean-token-sum-norm", _token_sum, counts_sequences=True, divides_by_max_len=True))
