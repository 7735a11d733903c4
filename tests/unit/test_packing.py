"""PPO's sequence packing (actors/algo/packing.py, actors/packed.py): the plan, the packed rows and the unpacked
outputs by hand, PPO's log-probs and values the same packed as padded, and the fallback for a model that does not
read restarting positions as boundaries. Every shipped family's logits and gradients: tests/unit/test_families.py."""

import pytest
import torch

from actors.algo.packing import pack, plan_for, plan_packing, unpack
from actors.packed import agrees, lm_forward, run


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
    from actors.algo.sampling import processed_logprobs
    from actors.policy import raw_action_logits, sequence_logprobs

    batch = prompt_and_response_batch()
    assert plan_for(batch.attention_mask).rows < batch.input_ids.shape[0]  # packing has something to save
    padded, packed = (sequence_logprobs(llama, batch, temperature=0.7, pack=p) for p in (False, True))
    actions = batch.action_mask.bool()
    assert torch.allclose(padded[actions], packed[actions], atol=1e-5)
    # The sampler's processed distribution (top_p, repetition penalty) reads whole sequences: the same too.
    with torch.no_grad():
        processed = [processed_logprobs(raw_action_logits(llama, batch.input_ids, batch.attention_mask, p),
                                        batch.input_ids, 0.7, 0.9, 1.2, attention_mask=batch.attention_mask,
                                        action_mask=batch.action_mask) for p in (False, True)]
    assert torch.allclose(processed[0], processed[1], atol=1e-5)
    assert torch.isfinite(token_logprobs(raw_action_logits(llama, batch.input_ids, batch.attention_mask, True),
                                         batch.input_ids[:, 1:])).all()


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
