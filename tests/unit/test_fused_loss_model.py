"""The SFT loss through the fused head equals the plain logits path on the real tiny Llama (value and grads)."""

from __future__ import annotations

import pytest
import torch

from common.config import load_config
from tests.conftest import POLICY_PATH, TINY_CPU


def batch_of(tokenizer):
    from actors.chat import encode_chat
    from actors.sft_data import collate

    chats = [[{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Once upon a time " * n}]
             for n in (1, 3, 5)]
    return collate([encode_chat(tokenizer, chat) for chat in chats], tokenizer.pad_token_id)


@pytest.mark.parametrize("lora", [False, True])
def test_fused_and_plain_losses_and_gradients_agree(lora):
    from actors import modeling
    from actors.sft_worker import causal_lm_loss_sums

    cfg = load_config(TINY_CPU, [f"lora.enabled={str(lora).lower()}", "lora.rank=4", "lora.dropout=0.0"])  # dropout would differ per pass
    model = modeling.trainable_causal_lm(cfg.model, cfg.lora)
    assert modeling.fused_loss_head(model) is not None
    batch = batch_of(modeling.load_tokenizer(POLICY_PATH))
    results = []
    for fused in (True, False):
        model.zero_grad()
        total, tokens = causal_lm_loss_sums(model, batch, fused=fused)
        (total / tokens).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((total.item(), tokens, grads))
    (fused_total, fused_tokens, fused_grads), (plain_total, plain_tokens, plain_grads) = results
    assert fused_tokens == plain_tokens > 0
    assert fused_total == pytest.approx(plain_total, rel=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_heads_the_fused_path_must_not_take():
    from actors import modeling

    cfg = load_config(TINY_CPU, ["lora.enabled=true", "lora.target_modules=[lm_head]"])
    untied = modeling.load_causal_lm(cfg.model)  # the tiny model ties its head, where LoRA on it is refused
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    assert modeling.fused_loss_head(modeling.apply_lora(untied, cfg.lora)) is None  # LoRA on the head
    model = modeling.load_causal_lm(cfg.model)
    model.config.final_logit_softcapping = 30.0
    assert modeling.fused_loss_head(model) is None
