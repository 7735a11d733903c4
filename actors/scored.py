"""Log-probs of the tokens a loss reads, with the output projection run at those positions alone.

PPO's policy and reference read the response tokens only, DPO the chosen and rejected replies, SFT the assistant
turns; yet a causal LM's head projects every position of the batch: the prompt's, and a padded batch's padding.
With a 150k-token vocabulary (Qwen2) the head is over a quarter of a 0.5B model's arithmetic and its
[tokens × vocab] float32 logits are the largest tensor of the step; even on the tiny recipe's model (512 tokens)
skipping the prompt's positions took a DPO micro-batch's forward and backward from 88 to 81.5 ms and a 0.4M GRPO
step from 0.48-0.50 to 0.44-0.46 s (README, "The head at the scored tokens alone"). TRL's trainers do the same
(their `fused_lm_head`).

The model is asked for its final hidden states and no logits (Transformers' `logits_to_keep` with an empty index
list skips the head), through the model's own call, so a DeepSpeed engine's forward still arms ZeRO's hooks.
Where the head is not a plain projection of the hidden state (modeling.fused_loss_head: soft-capped logits, LoRA on
the head, a ZeRO-3-partitioned head), or model.fused_loss is off, the model's own logits run at every position and
the scored ones are picked from them."""

from __future__ import annotations

import logging

import torch

from actors import modeling, packed
from actors.algo.logprobs import picked_logprobs, spread

log = logging.getLogger("rayalign.scored")

# Transformers' `logits_to_keep` takes position indices; an empty index list makes the model skip its head.
NO_LOGITS = torch.zeros(0, dtype=torch.long)


def final_hidden(model, **inputs) -> torch.Tensor:
    """[B, L, d] final hidden states (after the last norm) of `model`, its head skipped. Only the last layer's are
    asked for: Transformers keeps every requested layer's output until the forward ends, which a forward without
    gradients would otherwise hold for nothing ((layers + 1) x the hidden states)."""
    out = model(**inputs, output_hidden_states=[_layers(model) - 1], use_cache=False,
                logits_to_keep=NO_LOGITS.to(inputs["input_ids"].device))
    return out.hidden_states[-1]


def _layers(model) -> int:
    module = getattr(model, "module", model)  # a training engine's model
    config = module.config.get_text_config() if hasattr(module.config, "get_text_config") else module.config
    return config.num_hidden_layers


def hidden_forward(model) -> packed.Forward:
    """A causal LM's final hidden states as a packed.Forward (the shared-prompt mask as lm_forward hands it)."""
    def forward(input_ids, attention_mask, position_ids):
        return final_hidden(model, input_ids=input_ids, attention_mask=packed.for_attention(model, attention_mask),
                            position_ids=position_ids)
    return forward


def scored_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor,
                  pack: bool = False, prompts: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """[N, V] logits of the N positions where `scored` [B, L-1] is True (position t predicts token t + 1), in
    row-major order, as the model gives them; the batch laid out as packed.run lays it out (`pack`, `prompts`).
    With `fused` and a plain head, the head runs at those positions alone; otherwise over all of them."""
    head = modeling.fused_loss_head(model) if fused else None
    if head is None:
        return packed.run(packed.lm_forward(model), input_ids, attention_mask, pack, prompts)[:, :-1][scored]
    return head(packed.run(hidden_forward(model), input_ids, attention_mask, pack, prompts)[:, :-1][scored])


def scored_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor,
                    pack: bool = False, prompts: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """[B, L-1] log-probs of each next token where `scored` is True, 0 elsewhere (scored_logits' positions)."""
    logits = scored_logits(model, input_ids, attention_mask, scored, pack, prompts, fused)
    return spread(picked_logprobs(logits, input_ids[:, 1:][scored]), scored)


def head_agrees(model, vocab_size: int, device, dtype: torch.dtype, role: str, fused: bool = True) -> bool:
    """Whether this role may run the head at the scored positions alone (model.fused_loss, `fused`): the model's
    head is a plain projection (modeling.fused_loss_head) and, on a small seeded batch in eval mode, gives the same
    log-probs so as the model's own logits (at the dtype's tolerance, actors/packed.py). Logs the fallback when not."""
    if not fused or modeling.fused_loss_head(model) is None:
        return False
    ids, mask = packed.check_batch(vocab_size, device)
    scored = mask[:, 1:].bool()
    module = getattr(model, "module", model)
    training = module.training
    module.eval()
    try:
        with torch.no_grad():
            whole = scored_logprobs(model, ids, mask, scored, fused=False)
            try:
                head = scored_logprobs(model, ids, mask, scored, fused=True)
            except Exception as exc:  # noqa: BLE001 - any refusal of the head-less call means: keep the whole logits
                log.warning("%s: model.fused_loss is on, but this model's forward refused the head-less call (%s): "
                            "it computes the logits at every position", role, exc)
                return False
    finally:
        module.train(training)
    return packed.within_tolerance(packed.largest_difference(whole, [head], scored), dtype, role,
                                   "model.fused_loss is on, but this model's log-probs differ with the head at the "
                                   "scored tokens alone (largest relative difference %.3g): its forward changes the "
                                   "logits, so it computes them at every position")
