"""Typed batches passed between the PPO driver and the role actors.

Layout: each sequence is prompt + response, right-padded to L tokens. Per-token quantities live in the
*action* space of length L-1: position t is about token t+1 given tokens ≤ t (so logprobs[:, t] =
log p(input_ids[:, t+1] | input_ids[:, :t+1])), and `action_mask[:, t]` is 1 exactly when token t+1
belongs to the response.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, TypeVar

import torch

T = TypeVar("T")


def _tensor_fields(obj) -> dict[str, torch.Tensor | None]:
    """A batch dataclass's fields, or a collated dict's items (SFT, DPO and reward-model micro-batches)."""
    return dict(obj) if isinstance(obj, dict) else {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def shard(batch: T, n: int) -> list[T]:
    """Split every tensor field along the batch dimension into n equal, contiguous shards."""
    fields = _tensor_fields(batch)
    size = next(v for v in fields.values() if isinstance(v, torch.Tensor)).shape[0]
    if size % n:
        raise ValueError(f"batch of {size} sequences does not split into {n} equal shards")
    step = size // n
    return [type(batch)(**{k: v[i * step:(i + 1) * step] if isinstance(v, torch.Tensor) else v
                           for k, v in fields.items()}) for i in range(n)]


def to_device(batch: T, device: torch.device | str) -> T:
    """The same batch with every tensor on `device` (roles on a GPU receive CPU batches from the driver; Ray Train
    workers collate on the CPU, and neither DeepSpeed's engine nor the plain one moves its inputs)."""
    return type(batch)(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                          for k, v in _tensor_fields(batch).items()})


def concat(parts: list[T]) -> T:
    first = _tensor_fields(parts[0])
    return type(parts[0])(**{k: torch.cat([getattr(p, k) for p in parts]) if isinstance(v, torch.Tensor) else v
                             for k, v in first.items()})


def select(batch: T, index: torch.Tensor) -> T:
    return type(batch)(**{k: v[index] if isinstance(v, torch.Tensor) else v
                          for k, v in _tensor_fields(batch).items()})


def row_chunks(batch: T, chunk: int) -> Iterator[T]:
    """The batch in consecutive slices of at most `chunk` rows: the no-grad forwards (log-probs, values) run
    a chunk at a time so that their logits never hold the whole batch."""
    rows = batch.input_ids.shape[0]
    for start in range(0, rows, chunk):
        yield select(batch, torch.arange(start, min(start + chunk, rows)))


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, L] long, prompt + response, right-padded
    attention_mask: torch.Tensor  # [B, L] long
    action_mask: torch.Tensor  # [B, L-1] float, 1 where token t+1 is a response token

    @classmethod
    def from_samples(cls, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                     masks: list[list[int] | None] | None = None) -> "TokenBatch":
        """masks[i]: which of response i's tokens are actions (1: the model's own; 0: an environment's observation
        inside a multi-turn episode); None: all of them."""
        width = max(len(p) + len(r) for p, r in zip(prompts, responses))
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        actions = torch.zeros((len(prompts), width - 1), dtype=torch.float32)
        for row, (prompt, response) in enumerate(zip(prompts, responses)):
            seq = prompt + response
            ids[row, :len(seq)] = torch.tensor(seq)
            attention[row, :len(seq)] = 1
            mask = masks[row] if masks is not None else None
            response_actions = 1.0 if mask is None else torch.tensor(mask, dtype=actions.dtype)
            actions[row, len(prompt) - 1:len(seq) - 1] = response_actions
        return cls(ids, attention, actions)

    def per_token(self, response_values: list[list[float]]) -> torch.Tensor:
        """[B, L-1] float32 with each row's per-response-token values (one per response token, in order) at its
        action positions, 0 elsewhere: e.g. the engine's log-probs of the sampled tokens."""
        out = torch.zeros(self.action_mask.shape, dtype=torch.float32)
        for row, values in enumerate(response_values):
            positions = self.action_mask[row].nonzero().squeeze(-1)
            if len(values) != len(positions):
                raise ValueError(f"row {row}: {len(values)} values for {len(positions)} response tokens")
            out[row, positions] = torch.tensor(values, dtype=torch.float32)
        return out


@dataclass
class PolicyBatch:
    """What a policy rank trains on (its shard of the step's experience)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    old_logprobs: torch.Tensor  # [B, L-1] from the policy before this step's update (ppo.trainer_logprobs)
    ref_logprobs: torch.Tensor  # [B, L-1] frozen reference (used when KL is a loss term)
    # [B, L-1]; whitened over the whole step batch where the estimator whitens (gae, reinforce_baseline)
    advantages: torch.Tensor
    behaviour_logprobs: torch.Tensor  # [B, L-1] the engine's: under the distribution that sampled each token


@dataclass
class ValueBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    old_values: torch.Tensor  # [B, L-1] value predictions before this step's update
    returns: torch.Tensor  # [B, L-1] GAE returns
