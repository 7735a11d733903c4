"""actors/scored.py's start-up check: a role runs the head at the scored tokens alone only where, on its own model,
that gives the model's own log-probs; a model that changes its logits in its forward, or refuses the head-less call,
keeps the whole logits and says so."""

from __future__ import annotations

import pytest
import torch

from actors.scored import head_agrees
from tests.conftest import POLICY_PATH


@pytest.fixture()
def llama():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(POLICY_PATH)


def agrees(model) -> bool:
    return head_agrees(model, model.config.vocab_size, "cpu", torch.float32, "policy")


def test_a_plain_head_agrees_and_the_check_leaves_the_training_mode_as_it_found_it(llama):
    llama.train()
    assert agrees(llama) and llama.training
    llama.eval()
    assert agrees(llama) and not llama.training
    assert not head_agrees(llama, llama.config.vocab_size, "cpu", torch.float32, "policy", fused=False)  # turned off


def test_logits_changed_in_the_forward_keep_the_whole_logits_with_a_warning(llama, caplog):
    """A forward that rescales the logits without a config field saying so (as Granite's logits_scaling would,
    were modeling.fused_loss_head not to know it): the head alone would miss the scale."""
    def rescale(module, args, kwargs, output):
        output.logits = output.logits * 2.0
        return output

    llama.register_forward_hook(rescale, with_kwargs=True)
    assert not agrees(llama)
    assert "policy: model.fused_loss is on, but this model's log-probs differ" in caplog.text


def test_a_forward_without_logits_to_keep_keeps_the_whole_logits_with_a_warning(llama, caplog):
    forward = llama.forward

    def old_style(input_ids=None, attention_mask=None, position_ids=None, use_cache=None, **kwargs):
        if "logits_to_keep" in kwargs:
            raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
        return forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=use_cache, **kwargs)

    llama.forward = old_style
    assert not agrees(llama)
    assert "refused the head-less call" in caplog.text and "logits_to_keep" in caplog.text


def test_a_soft_capped_head_is_not_tried(llama, caplog):
    llama.config.final_logit_softcapping = 30.0
    assert not agrees(llama) and caplog.text == ""


def test_the_entropy_statistic_in_chunks_is_the_whole_ones(monkeypatch):
    """PPO's entropy over the response logits [N, V] goes positions_per_pass at a time (bounded temporaries)."""
    from actors import policy
    from actors.algo import entropy_from_logits, logprobs

    logits = torch.randn(7, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    monkeypatch.setattr(logprobs, "WHOLE_BATCH_LOGITS", 2 * 11)  # 4 chunks: 2, 2, 2, 1 positions
    whole = entropy_from_logits((logits / 0.7).unsqueeze(0)).squeeze(0)
    assert torch.allclose(policy.response_entropy(logits, 0.7), whole, rtol=1e-12, atol=0)
    assert policy.response_entropy(logits[:0], 0.7).shape == (0,)


def test_picked_log_probs_in_chunks_are_the_whole_ones_with_the_same_gradient(monkeypatch):
    """The scored positions' log-probs (actors/algo/logprobs.picked_logprobs) go positions_per_pass at a time
    (bounded temporaries when every position is scored), with the values and gradient of one pass."""
    from actors.algo import logprobs

    generator = torch.Generator().manual_seed(4)
    logits = (torch.randn(9, 13, generator=generator, dtype=torch.float64) * 2).requires_grad_()
    targets = torch.randint(0, 13, (9,), generator=generator)
    whole = logprobs.picked_logprobs(logits, targets)
    (whole_grad,) = torch.autograd.grad(whole.sum(), logits)
    monkeypatch.setattr(logprobs, "WHOLE_BATCH_LOGITS", 2 * 13)  # chunks of 2 positions
    chunked = logprobs.picked_logprobs(logits, targets)
    (chunked_grad,) = torch.autograd.grad(chunked.sum(), logits)
    expected = logits.detach().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(whole, expected, rtol=1e-12, atol=0) and torch.equal(chunked, whole)
    assert torch.allclose(chunked_grad, whole_grad, rtol=1e-12, atol=0)
