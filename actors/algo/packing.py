"""Right-padded sequences packed into fewer rows without padding, and the model's outputs unpacked back.

PPO's batches are prompt + response, right-padded to the longest sequence (actors/protocol.py), so every row
pays for that longest one: with prompts of 30 to 130 tokens about a fifth of the tokens a forward pass computes
are padding. Packing puts several sequences end to end in a row of the same width, numbers each one's positions
from 0 (Transformers reads a restart of position_ids as a sequence boundary and lets each token attend only
within its own sequence), and after the forward pass `unpack` puts every output back where the padded layout has
it, so everything downstream (log-probs, the sampler's processed distribution, losses) is unchanged. veRL calls
this remove-padding, OpenRLHF packing samples. Rows keep the padded width, so attention costs the same per token
and only the padding's share of the work goes away.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackPlan:
    rows: int  # packed rows
    width: int  # tokens per packed row (the padded batch's width)
    row: torch.Tensor  # [B] long: the packed row holding each sequence
    start: torch.Tensor  # [B] long: where in that row it begins
    lengths: torch.Tensor  # [B] long: its tokens

    @property
    def padded_share(self) -> float:
        """The share of the packed rows' tokens that are still padding (the rows' tails)."""
        return 1.0 - float(self.lengths.sum()) / (self.rows * self.width)


def plan_packing(lengths: list[int], width: int) -> PackPlan:
    """Best fit, longest first: each sequence goes to the fullest row it still fits in (a new row if none).
    Deterministic for given lengths. Every length must be between 1 and width."""
    if any(n < 1 or n > width for n in lengths):
        raise ValueError(f"every sequence length must lie in [1, {width}], got {min(lengths)}..{max(lengths)}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    room: list[tuple[int, int]] = []  # (free tokens, row), kept sorted
    free_of: list[int] = []
    row, start = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            index = len(free_of)
            free_of.append(width)
        else:
            _, index = room.pop(at)
        row[i], start[i] = index, width - free_of[index]
        free_of[index] -= n
        if free_of[index] > 0:
            bisect.insort(room, (free_of[index], index))
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PackPlan(len(free_of), width, as_long(row), as_long(start), as_long(lengths))


def plan_for(attention_mask: torch.Tensor) -> PackPlan:
    """The plan for a right-padded batch: each row's length is its attention mask's sum."""
    return plan_packing(attention_mask.sum(dim=1).tolist(), attention_mask.shape[1])


def _flat_index(plan: PackPlan, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, positions] index into the flattened packed rows, [B, positions] bool: inside the sequence). Positions
    past a sequence's end point at its last token, so gathered values stay finite."""
    t = torch.arange(positions).unsqueeze(0)
    inside = t < plan.lengths.unsqueeze(1)
    offset = torch.minimum(t, (plan.lengths - 1).unsqueeze(1))
    return (plan.row * plan.width + plan.start).unsqueeze(1) + offset, inside


def pack(input_ids: torch.Tensor, plan: PackPlan, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [R, W], position_ids [R, W]) of the packed rows. A row's unused tail is pad tokens numbered as
    one more sequence from 0, so it attends only to itself."""
    rows, width = plan.rows, plan.width
    index, inside = _flat_index(plan, input_ids.shape[1])
    ids = torch.full((rows * width,), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    used = torch.zeros(rows * width, dtype=torch.bool, device=input_ids.device)
    flat, keep = index.to(input_ids.device)[inside], inside.to(input_ids.device)
    ids[flat] = input_ids[keep]
    used[flat] = True
    # Positions: 0.. within each sequence; the tail of a row restarts at 0 where its last sequence ended.
    positions = torch.zeros(rows * width, dtype=torch.long, device=input_ids.device)
    positions[flat] = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(keep)[keep]
    positions = positions.view(rows, width)
    used = used.view(rows, width)
    tail_start = used.sum(dim=1, keepdim=True)  # sequences fill each row from its start, so the tail is its end
    tail = torch.arange(width, device=input_ids.device).unsqueeze(0) - tail_start
    positions = torch.where(used, positions, tail)
    return ids.view(rows, width), positions


def unpack(packed: torch.Tensor, plan: PackPlan, positions: int) -> torch.Tensor:
    """[B, positions, ...] from the packed rows' outputs [R, W, ...]: each sequence's outputs where the padded
    layout has them; past a sequence's end, its last token's output (finite, and masked by every consumer as
    the padded layout's pad positions are). Differentiable."""
    index, _ = _flat_index(plan, positions)
    flat = packed.reshape(plan.rows * plan.width, *packed.shape[2:])
    return flat[index.to(packed.device).reshape(-1)].view(index.shape[0], positions, *packed.shape[2:])
