"""Log-probs of the tokens a loss reads, with the output projection run at those positions alone.

A DPO or SFT loss reads the reply's tokens only, yet a causal LM's head projects every position of the batch: the
prompt's, and the padding's of a padded batch. With a 150k-token vocabulary (Qwen2) the head is over a quarter of
a 0.5B model's arithmetic and its [tokens × vocab] float32 logits are the largest tensor of the step; on the tiny
recipe's model (512 tokens) skipping the prompt's positions took a DPO micro-batch's forward and backward from
95 to 85 ms. TRL's trainers do the same (their `fused_lm_head`).

The model is asked for its final hidden states and no logits (Transformers' `logits_to_keep` with an empty index
list skips the head), through the model's own call, so a DeepSpeed engine's forward still arms ZeRO's hooks.
Where the head is not a plain projection of the hidden state (modeling.fused_loss_head: soft-capped logits, LoRA on
the head, a ZeRO-3-partitioned head) the whole logits path runs as before.
"""

from __future__ import annotations

import torch

from actors import modeling, packed
from actors.algo.logprobs import token_logprobs

# Transformers' `logits_to_keep` takes position indices; an empty index list makes the model skip its head.
NO_LOGITS = torch.zeros(0, dtype=torch.long)


def final_hidden(model, **inputs) -> torch.Tensor:
    """[B, L, d] final hidden states (after the last norm) of `model`, its head skipped."""
    out = model(**inputs, output_hidden_states=True, use_cache=False,
                logits_to_keep=NO_LOGITS.to(inputs["input_ids"].device))
    return out.hidden_states[-1]


def hidden_forward(model) -> packed.Forward:
    """A causal LM's final hidden states as a packed.Forward (the shared-prompt mask as lm_forward hands it)."""
    def forward(input_ids, attention_mask, position_ids):
        return final_hidden(model, input_ids=input_ids, attention_mask=packed.for_attention(model, attention_mask),
                            position_ids=position_ids)
    return forward


def scored_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor,
                    pack: bool = False, prompts: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """[B, L-1] log-probs of each next token (position t: token t + 1) where `scored` [B, L-1] is True, 0 elsewhere;
    laid out as packed.run lays out the batch (`pack`, `prompts`). With `fused` and a plain head, the head runs at
    the scored positions only; otherwise over all of them, with the same numbers up to float rounding."""
    targets = input_ids[:, 1:]
    head = modeling.fused_loss_head(model) if fused else None
    if head is None:
        logits = packed.run(packed.lm_forward(model), input_ids, attention_mask, pack, prompts)[:, :-1]
        return token_logprobs(logits, targets).masked_fill(~scored, 0.0)
    hidden = packed.run(hidden_forward(model), input_ids, attention_mask, pack, prompts)[:, :-1]
    picked = token_logprobs(head(hidden[scored]).unsqueeze(0), targets[scored].unsqueeze(0)).squeeze(0)
    return torch.zeros(scored.shape, dtype=picked.dtype, device=picked.device).masked_scatter(scored, picked)
