"""Per-token log-probabilities and entropies from language-model logits.

Shapes: B = batch rows, T = positions, V = vocabulary. Low-precision logits (bf16/fp16) are upcast to
float32 one batch row at a time (token_logprobs: when the batch holds more than WHOLE_BATCH_LOGITS), so the
extra memory is one row's [T, V] copy rather than the whole batch's; float64 logits stay float64 (tests need
exact numbers).
"""

from __future__ import annotations

import torch


# Row by row, the upcast copy and logsumexp's temporaries are one row's [T, V]; up to this many logits (16 MB in
# float32) the whole batch goes in one call instead, since then the per-row ops and their backward nodes cost
# more than that memory saves: 8 % of a tiny-vocabulary DPO micro-batch's forward and backward (16 rows).
WHOLE_BATCH_LOGITS = 1 << 22


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[b, t, labels[b, t]] → [B, T].

    logits [B, T, V] must already be aligned so that logits[:, t] predicts labels[:, t]
    (see shift_for_causal_lm). Computed as gathered logit − logsumexp, which never materialises the
    full [B, T, V] log-softmax.
    """
    dtype = _compute_dtype(logits)
    if logits.numel() <= WHOLE_BATCH_LOGITS:
        return _picked_minus_logsumexp(logits.to(dtype), labels)
    return torch.stack([_picked_minus_logsumexp(row_logits.to(dtype), row_labels)
                        for row_logits, row_labels in zip(logits, labels)])


def _picked_minus_logsumexp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def positions_per_pass(vocab: int) -> int:
    """Positions of [N, V] logits (one per scored token: actors/scored.py) a pass takes so that it holds at most
    WHOLE_BATCH_LOGITS logits: the bound token_logprobs keeps per row."""
    return max(1, WHOLE_BATCH_LOGITS // max(vocab, 1))


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[n, targets[n]] → [N] for the logits [N, V] of N positions (upcast as token_logprobs
    does), positions_per_pass at a time: the upcast copy and logsumexp's temporaries stay one pass's however many
    positions there are."""
    per_pass = positions_per_pass(logits.shape[-1])
    dtype = _compute_dtype(logits)
    if logits.shape[0] <= per_pass:
        return _picked_minus_logsumexp(logits.to(dtype), targets)
    return torch.cat([_picked_minus_logsumexp(part.to(dtype), wanted)
                      for part, wanted in zip(logits.split(per_pass), targets.split(per_pass))])


def spread(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[B, T] with `values` [N] at the positions where `where` [B, T] is True (row-major, as `x[where]` reads
    them), 0 elsewhere."""
    return torch.zeros(where.shape, dtype=values.dtype, device=values.device).masked_scatter(where, values)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) at every position → [B, T] (nats).

    Uses H = logsumexp(l) − Σ softmax(l)·l. Logits of −inf (vocabulary masked out by a sampler) have
    probability 0 and are zeroed before the product, since 0·(−inf) would be NaN.
    """
    dtype = _compute_dtype(logits)
    rows = []
    for row_logits in logits:
        row_logits = row_logits.to(dtype)
        probs = torch.softmax(row_logits, dim=-1)
        finite_logits = row_logits.masked_fill(torch.isneginf(row_logits), 0.0)
        rows.append(torch.logsumexp(row_logits, dim=-1) - (probs * finite_logits).sum(dim=-1))
    return torch.stack(rows)


def shift_for_causal_lm(
    logits: torch.Tensor, input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a causal LM's outputs with its targets: (logits[:, :-1] [B, T-1, V], input_ids[:, 1:] [B, T-1]).

    Position t of a causal LM predicts token t+1, so the last logit has no target and the first token
    has no prediction.
    """
    return logits[:, :-1], input_ids[:, 1:]
