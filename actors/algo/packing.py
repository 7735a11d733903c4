"""Right-padded sequences packed into fewer rows without padding, and the model's outputs unpacked back.

PPO's batches are prompt + response, right-padded to the longest sequence (actors/protocol.py), so every row
pays for that longest one: with prompts of 30 to 130 tokens about a fifth of the tokens a forward pass computes
are padding. Packing puts several sequences end to end in a row of the same width, numbers each one's positions
from 0 (Transformers reads a restart of position_ids as a sequence boundary and lets each token attend only
within its own sequence), and after the forward pass `unpack` puts every output back where the padded layout has
it, so everything downstream (log-probs, the sampler's processed distribution, losses) is unchanged. veRL calls
this remove-padding, OpenRLHF packing samples. Rows keep the padded width, so attention costs the same per token
and only the padding's share of the work goes away.

Shared prompts (`plan_shared`, ppo.share_prompts) go one step further for GRPO's groups: the answers to one prompt
all start with its tokens, and a causal model computes those the same way for each, so a group's prompt is laid
down once with its answers after it, each answer numbered from where the prompt ends and attending to the prompt
and to itself only (`shared_attention`, a 4-D mask). `unpack` reads every answer's prompt positions from the one
copy, so the prompt's outputs (and in training their gradients, summed over the group) are what each padded
sequence would have had. With 4 answers of 24 tokens to prompts of about 50 this computes half the tokens.
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
    # Shared prompts only (plan_shared; None: every sequence has its own tokens): each sequence's prompt tokens,
    # laid down once per unit (a prompt and the answers that share it) at `start`, and how far past the prompt its
    # own tokens begin in that unit (the answers before it).
    prefix: torch.Tensor | None = None  # [B] long
    shift: torch.Tensor | None = None  # [B] long

    @property
    def tokens(self) -> int:
        """Tokens laid down in the rows (a shared prompt counted once)."""
        if self.prefix is None:
            return int(self.lengths.sum())
        units = {(int(r), int(s)): int(p) for r, s, p in zip(self.row, self.start, self.prefix)}
        return int((self.lengths - self.prefix).sum()) + sum(units.values())

    @property
    def shares(self) -> bool:
        """Whether some prompt is laid down for more than one sequence."""
        return self.prefix is not None and bool((self.shift > 0).any())

    @property
    def padded_share(self) -> float:
        """The share of the packed rows' tokens that are still padding (the rows' tails)."""
        return 1.0 - self.tokens / (self.rows * self.width)


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


def prompt_lengths(action_mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] tokens before each sequence's first action (its prompt; the whole sequence where it has none), from the
    action-space mask [B, L-1] (actors/protocol.py: action_mask[:, t] is about token t+1)."""
    acts = action_mask > 0
    first = acts.float().argmax(dim=1) + 1
    return torch.where(acts.any(dim=1), first, attention_mask.sum(dim=1)).long()


def prompt_groups(input_ids: torch.Tensor, prompts: torch.Tensor) -> list[list[int]]:
    """The indices of the sequences with the same first `prompts[i]` tokens, group by group in order of first
    appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, n in enumerate(prompts.tolist()):
        groups.setdefault((n, *input_ids[i, :n].tolist()), []).append(i)
    return list(groups.values())


def grouped_order(input_ids: torch.Tensor, prompts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B] a random order of the sequences that keeps each prompt's sequences together: its groups shuffled."""
    groups = prompt_groups(input_ids, prompts)
    return torch.tensor([i for g in torch.randperm(len(groups), generator=generator).tolist() for i in groups[g]],
                        dtype=torch.long)


def plan_shared(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: torch.Tensor) -> PackPlan:
    """Sequences whose first `prompts[i]` tokens are the same share one copy of them: each such group becomes units
    of its prompt followed by its members' own tokens, at most twice the batch's width long (so one prompt's many
    answers split into several units rather than one row of unbounded width); the units are packed best fit,
    longest first, into rows as wide as the widest unit (at least the batch's width)."""
    lengths, prefix, width = attention_mask.sum(dim=1).tolist(), prompts.tolist(), input_ids.shape[1]
    units, shift = [], [0] * len(lengths)
    for members in prompt_groups(input_ids, prompts):
        unit, size = [], 0
        for i in members:
            own = lengths[i] - prefix[i]
            if unit and size + own > 2 * width:
                units.append(unit)
                unit = []
            if not unit:
                size = prefix[i]
            shift[i] = size - prefix[i]
            unit.append(i)
            size += own
        units.append(unit)
    unit_lengths = [prefix[unit[0]] + sum(lengths[i] - prefix[i] for i in unit) for unit in units]
    placed = plan_packing(unit_lengths, max(width, *unit_lengths))
    row, start = [0] * len(lengths), [0] * len(lengths)
    for u, unit in enumerate(units):
        for i in unit:
            row[i], start[i] = int(placed.row[u]), int(placed.start[u])
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PackPlan(placed.rows, placed.width, as_long(row), as_long(start), as_long(lengths), as_long(prefix),
                    as_long(shift))


def _flat_index(plan: PackPlan, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, positions] index into the flattened packed rows, [B, positions] bool: inside the sequence). Positions
    past a sequence's end point at its last token, so gathered values stay finite; with shared prompts, positions
    past the prompt sit `shift` further on in the unit."""
    t = torch.arange(positions).unsqueeze(0)
    inside = t < plan.lengths.unsqueeze(1)
    offset = torch.minimum(t, (plan.lengths - 1).unsqueeze(1))
    if plan.prefix is not None:
        offset = offset + torch.where(offset >= plan.prefix.unsqueeze(1), plan.shift.unsqueeze(1), 0)
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


def shared_attention(plan: PackPlan) -> torch.Tensor:
    """[R, 1, W, W] bool, True where query token q of a row may attend to key token k: causally within one unit,
    to the unit's prompt and to the query's own sequence only (not to the other answers to the same prompt). A
    row's unused tail attends causally to itself."""
    rows, width = plan.rows, plan.width
    index, inside = _flat_index(plan, int(plan.lengths.max()))
    t = torch.arange(index.shape[1]).unsqueeze(0)
    unit = torch.full((rows * width,), -1, dtype=torch.long)
    branch = torch.zeros(rows * width, dtype=torch.long)  # 0: a unit's prompt (or a tail), i + 1: sequence i's own
    unit[index[inside]] = (plan.row * plan.width + plan.start).unsqueeze(1).expand_as(index)[inside]
    own = inside & (t >= plan.prefix.unsqueeze(1))
    branch[index[own]] = (torch.arange(len(plan.lengths)) + 1).unsqueeze(1).expand_as(index)[own]
    unit, branch = unit.view(rows, width), branch.view(rows, width)
    unit = torch.where(unit < 0, -1 - torch.arange(rows).unsqueeze(1), unit)  # each row's tail a unit of its own
    same_unit = unit.unsqueeze(2) == unit.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    visible = (branch.unsqueeze(1) == 0) | (branch.unsqueeze(1) == branch.unsqueeze(2))
    return (same_unit & causal & visible).unsqueeze(1)
