"""PPO's sequence packing (actors/algo/packing.py, actors/packed.py): the plan, the packed rows and the unpacked
outputs by hand, PPO's log-probs and values the same packed as padded, and the fallback for a model that does not
read restarting positions as boundaries; shared prompts (ppo.share_prompts) likewise, with their attention mask by
hand. Every shipped family's logits and gradients: tests/unit/test_families.py."""

import pytest
import torch

from actors.algo.packing import (
    grouped_order,
    pack,
    plan_for,
    plan_packing,
    plan_shared,
    prompt_lengths,
    shared_attention,
    unpack,
)
from actors.packed import agrees, lm_forward, may_share, run, shares_agree


def test_plan_is_best_fit_longest_first():
    # width 10; longest first: 9 -> row 0 (1 free), 6 -> row 1 (4 free), 4 -> row 1 (full), 3 -> row 2,
    # 2 -> row 2, 1 -> row 0 (the fullest row it fits in)
    plan = plan_packing([3, 9, 4, 1, 6, 2], 10)
    assert plan.rows == 3
    assert plan.row.tolist() == [2, 0, 1, 0, 1, 2]
    assert plan.start.tolist() == [0, 0, 6, 9, 0, 3]
    assert plan.padded_share == pytest.approx(1 - 25 / 30)


def test_plan_rejects_a_sequence_longer_than_the_row():
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        plan_packing([2, 5], 4)


def test_pack_lays_sequences_end_to_end_with_restarting_positions():
    ids = torch.tensor([[11, 12, 13, 0], [21, 22, 0, 0], [31, 32, 33, 34], [41, 0, 0, 0]])
    plan = plan_for((ids != 0).long())  # lengths 3, 2, 4, 1 in rows of 4
    packed_ids, positions = pack(ids, plan, pad_id=-1)
    assert packed_ids.tolist() == [[31, 32, 33, 34], [11, 12, 13, 41], [21, 22, -1, -1]]
    assert positions.tolist() == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 1]]
    # Every sequence's outputs come back where the padded layout has them; past its end, its last token's.
    back = unpack(packed_ids.unsqueeze(-1) * 10, plan, 4).squeeze(-1)
    assert back.tolist() == [[110, 120, 130, 130], [210, 220, 220, 220], [310, 320, 330, 340], [410, 410, 410, 410]]


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def prompt_and_response_batch():
    from actors.protocol import TokenBatch

    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 96, (n,), generator=gen).tolist() for n in (9, 4, 13, 6, 5, 11)]
    responses = [torch.randint(3, 96, (n,), generator=gen).tolist() for n in (5, 8, 3, 8, 1, 7)]
    return TokenBatch.from_samples(prompts, responses, pad_id=0)


def test_ppo_logprobs_are_the_padded_ones(llama):
    from actors.algo import token_logprobs
    from actors.algo.sampling import processed_logprobs_at
    from actors.policy import response_logits, sequence_logprobs
    from actors.algo.logprobs import picked_logprobs

    batch = prompt_and_response_batch()
    assert plan_for(batch.attention_mask).rows < batch.input_ids.shape[0]  # packing has something to save
    padded, packed = (sequence_logprobs(llama, batch, temperature=0.7, pack=p) for p in (False, True))
    actions = batch.action_mask.bool()
    assert torch.allclose(padded[actions], packed[actions], atol=1e-5)
    # The head at the response tokens alone (actors/scored.py) against the model's own logits at every position.
    with torch.no_grad():
        logits = llama(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1] / 0.7
        whole = token_logprobs(logits, batch.input_ids[:, 1:])
    unfused = sequence_logprobs(llama, batch, temperature=0.7, fused=False)
    for got in (padded, unfused):
        assert torch.allclose(got[actions], whole[actions], atol=1e-5) and (got[~actions] == 0).all()
    # The sampler's processed distribution (top_p, repetition penalty) reads whole sequences: the same too.
    with torch.no_grad():
        processed = [processed_logprobs_at(response_logits(llama, batch, p), batch.input_ids, actions, 0.7, 0.9, 1.2,
                                           attention_mask=batch.attention_mask) for p in (False, True)]
        assert torch.allclose(processed[0], processed[1], atol=1e-5)
        targets = batch.input_ids[:, 1:][actions]
        assert torch.isfinite(picked_logprobs(response_logits(llama, batch, True), targets)).all()


def test_a_model_that_ignores_position_restarts_stays_padded(llama, caplog):
    def ignores_positions(input_ids, attention_mask, position_ids):  # attends across packed sequences
        return llama(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    assert agrees(lm_forward(llama), 96, "cpu", torch.float32, "policy")
    assert not agrees(ignores_positions, 96, "cpu", torch.float32, "policy")
    assert "stay padded" in caplog.text and "policy" in caplog.text


def test_a_batch_with_nothing_to_pack_runs_causal_only_with_the_same_outputs(llama):
    """Every sequence longer than half the width: no two share a row, so the right-padded batch runs without
    its padding mask (the causal mask alone keeps real tokens from the pads after them)."""
    seen = []

    def forward(input_ids, attention_mask, position_ids):
        seen.append((attention_mask, position_ids))
        return lm_forward(llama)(input_ids, attention_mask, position_ids)

    ids = torch.randint(3, 96, (3, 10), generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(10).unsqueeze(0) < torch.tensor([[10], [7], [6]])).long()
    with torch.no_grad():
        padded = lm_forward(llama)(ids * mask, mask, None)
        causal = run(forward, ids * mask, mask, packed=True)
    assert seen == [(None, None)]
    assert torch.allclose(padded[mask.bool()], causal[mask.bool()], atol=1e-5)


def three_sequences_two_prompts():
    from actors.protocol import TokenBatch

    return TokenBatch.from_samples([[5, 6, 7], [1, 2], [5, 6, 7]], [[8, 9], [3], [4]], pad_id=0)


def test_a_shared_prompt_is_laid_down_once_with_each_answer_after_it():
    batch = three_sequences_two_prompts()  # width 5
    prompts = prompt_lengths(batch.action_mask, batch.attention_mask)
    assert prompts.tolist() == [3, 2, 3]
    plan = plan_shared(batch.input_ids, batch.attention_mask, prompts)
    # Units: [5 6 7 | 8 9 | 4] (6 tokens, so rows of 6) and [1 2 | 3]; sequence 2's answer sits 2 past its prompt.
    assert (plan.rows, plan.width, plan.shift.tolist(), plan.tokens, plan.shares) == (2, 6, [0, 0, 2], 9, True)
    ids, positions = pack(batch.input_ids, plan, pad_id=-1)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 4], [1, 2, 3, -1, -1, -1]]
    assert positions.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 0, 1, 2]]
    sees = shared_attention(plan)[:, 0].int().tolist()
    assert sees[0] == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 1]]  # the last answer sees the prompt and itself only
    assert sees[1] == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0],
                       [0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]  # the tail only itself
    back = unpack(ids.unsqueeze(-1) * 10, plan, 5).squeeze(-1)
    assert back.tolist() == [[50, 60, 70, 80, 90], [10, 20, 30, 30, 30], [50, 60, 70, 40, 40]]


def test_grouped_order_keeps_each_prompts_sequences_together():
    from actors.protocol import TokenBatch

    prompts = [[1, 2], [3], [1, 2], [4, 4], [3], [4, 4], [1, 2], [3]]
    batch = TokenBatch.from_samples(prompts, [[9]] * len(prompts), pad_id=0)
    order = grouped_order(batch.input_ids, prompt_lengths(batch.action_mask, batch.attention_mask),
                          torch.Generator().manual_seed(0)).tolist()
    assert sorted(order) == list(range(8))
    runs = [tuple(prompts[i]) for i in order]
    assert len([k for k in range(8) if k == 0 or runs[k] != runs[k - 1]]) == 3  # three groups, each in one run


def grpo_like_batch():
    """Four prompts (two of them twice as many answers) with answers of different lengths."""
    from actors.protocol import TokenBatch

    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 96, (n,), generator=gen).tolist() for n in (9, 4, 13, 6)]
    picked = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    responses = [torch.randint(3, 96, (n,), generator=gen).tolist() for n in (5, 8, 3, 8, 1, 7, 2, 6, 4, 5)]
    return TokenBatch.from_samples([prompts[i] for i in picked], responses, pad_id=0)


def test_shared_prompts_give_the_padded_logits_and_gradients(llama):
    from actors.policy import response_logits

    batch = grpo_like_batch()
    prompts = prompt_lengths(batch.action_mask, batch.attention_mask)
    assert plan_shared(batch.input_ids, batch.attention_mask, prompts).tokens < plan_for(batch.attention_mask).tokens
    outputs = []
    for pack_ in (False, True):  # sharing the answers' prompts where packed
        llama.zero_grad()
        logits = response_logits(llama, batch, pack_, share=pack_)  # [response tokens, V]
        torch.log_softmax(logits, -1).amax(-1).sum().backward()
        outputs.append((logits.detach(),
                        torch.cat([p.grad.flatten() for p in llama.parameters() if p.grad is not None])))
    llama.zero_grad()
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-5)
    assert torch.allclose(outputs[0][1], outputs[1][1], atol=1e-5)  # the prompt's gradient summed over its answers
    assert shares_agree(lm_forward(llama), 96, "cpu", torch.float32, "policy")


def test_a_model_that_drops_the_shared_mask_packs_without_sharing(llama, caplog):
    def drops_4d_masks(input_ids, attention_mask, position_ids):  # lets every answer see the answers before it
        mask = attention_mask if attention_mask is None or attention_mask.dim() == 2 else None
        return llama(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits

    assert agrees(drops_4d_masks, 96, "cpu", torch.float32, "value")
    assert not shares_agree(drops_4d_masks, 96, "cpu", torch.float32, "value")
    assert "without sharing" in caplog.text and "value" in caplog.text
    from transformers import MistralConfig, Qwen2Config

    assert not may_share(MistralConfig(sliding_window=4096), "policy")
    assert "sliding window (4096 tokens)" in caplog.text
    assert may_share(Qwen2Config(sliding_window=4096, use_sliding_window=False), "policy")
