"""The sampler's processed distribution (repetition penalty → temperature → top-k → top-p), by hand in float64.

tests/ray/test_processed_logprobs_vllm.py checks the same functions against a real vLLM engine.
"""

import math

import pytest
import torch

from actors.algo.logprobs import token_logprobs
from actors.algo import sampling
from actors.algo.sampling import fill_dropped, process_next_token_logits, processed_logprobs, processed_logprobs_at

F64 = torch.float64
LN2, LN3, LN4 = math.log(2.0), math.log(3.0), math.log(4.0)


def t(values):
    return torch.tensor(values, dtype=F64)


def probs(logits, seen=None, temperature=1.0, top_p=1.0, repetition_penalty=1.0, top_k=-1):
    seen = torch.zeros_like(logits, dtype=torch.bool) if seen is None else torch.tensor(seen)
    return process_next_token_logits(logits, seen, temperature, top_p, repetition_penalty, top_k).softmax(-1)


# Repetition penalty


def test_penalty_divides_positive_and_multiplies_non_positive_logits_of_seen_tokens_only():
    logits = t([[2.0, -1.0, 0.5, 0.0, -3.0]])
    seen = torch.tensor([[True, True, False, True, False]])
    z = process_next_token_logits(logits, seen, temperature=1.0, repetition_penalty=2.0)
    assert torch.equal(z, t([[1.0, -2.0, 0.5, 0.0, -3.0]]))
    # ρ < 1 is legal in vLLM and applies the same rule literally: seen tokens become likelier.
    z = process_next_token_logits(logits, seen, temperature=1.0, repetition_penalty=0.5)
    assert torch.equal(z, t([[4.0, -0.5, 0.5, 0.0, -3.0]]))


def test_seen_set_is_the_prompt_and_earlier_tokens_not_padding_nor_the_target():
    # Every logit is ln 4, so with ρ = 2 a seen token has e^z = 2 and an unseen one e^z = 4.
    logits = torch.full((2, 3, 5), LN4, dtype=F64)
    input_ids = torch.tensor([[3, 1, 1, 0],
                              [4, 3, 1, 1]])  # row 1: token 4 at position 0 is left padding
    attention_mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    action_mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    out = processed_logprobs(logits, input_ids, temperature=1.0, repetition_penalty=2.0,
                             attention_mask=attention_mask, action_mask=action_mask)
    expected = t([
        # t=0 seen {3}: 4/(4·4+2) for unseen 1; t=1 seen {3,1}: 2/16 for seen 1; t=2 the same set (1 counts once)
        [math.log(4 / 18), math.log(2 / 16), math.log(4 / 16)],
        # t=0 is outside action_mask → 0; t=1 seen {3} (padding never counts); t=2 seen {3,1}
        [0.0, math.log(4 / 18), math.log(2 / 16)],
    ])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)


# Top-p and top-k

# Probabilities 1/8, 1/2, 1/16, 1/4, 1/16 (tokens 0..4). Ascending: 1/16, 1/16, 1/8, 1/4, 1/2 with running sums
# 1/16, 1/8, 1/4, 1/2, 1. Top-p drops every token whose running sum is ≤ 1 − p, never the likeliest.
DYADIC = [1 / 8, 1 / 2, 1 / 16, 1 / 4, 1 / 16]


@pytest.mark.parametrize("top_p, expected", [
    (1.0, DYADIC),                          # off
    (0.76, [1 / 7, 4 / 7, 0, 2 / 7, 0]),     # 1 − p = 0.24: the two 1/16 go (sums 1/16, 1/8); 1/8 stays (1/4 > 0.24)
    (0.74, [0, 2 / 3, 0, 1 / 3, 0]),         # 1 − p = 0.26: 1/8 goes too (1/4 ≤ 0.26); kept mass 3/4 ≥ p
    (0.4, [0, 1, 0, 0, 0]),                 # 1 − p = 0.6: 1/4 goes (1/2 ≤ 0.6)
    (1e-20, [0, 1, 0, 0, 0]),               # 1 − p rounds to 1: every running sum is ≤ 1, the likeliest still stays
])
def test_top_p_keeps_the_smallest_top_set_holding_mass_p_renormalised(top_p, expected):
    got = probs(t([DYADIC]).log(), top_p=top_p)
    torch.testing.assert_close(got, t([expected]), rtol=1e-12, atol=0.0)


def test_top_p_drops_a_token_whose_running_sum_equals_one_minus_p_and_ties_follow_sort_order():
    logits = torch.zeros(1, 5, dtype=F64)
    assert torch.equal(logits.softmax(-1).cumsum(-1)[0, 1], torch.tensor(1.0 - 0.6, dtype=F64)), \
        "precondition: 0.2 + 0.2 == 1 − 0.6 exactly in float64"
    got = probs(logits, top_p=0.6)
    # Running sums 0.2, 0.4 (= 1 − p: dropped), 0.6, … → three of the five tied tokens stay, each 1/3
    # (with a strict < four would stay). Which three is torch.sort's order, the call vLLM makes too.
    kept = set(torch.nonzero(got[0]).flatten().tolist())
    assert kept == set(logits.sort(-1).indices[0, 2:].tolist())
    torch.testing.assert_close(got[0, sorted(kept)], t([1 / 3] * 3), rtol=1e-12, atol=0.0)


def test_top_k_keeps_ties_with_the_kth_logit_and_is_off_at_minus_one_zero_and_vocab_size():
    logits = t([[3.0, 1.0, 1.0, 0.0, -1.0]])
    norm = math.exp(3) + 2 * math.exp(1)
    expected = t([[math.exp(3) / norm, math.exp(1) / norm, math.exp(1) / norm, 0.0, 0.0]])
    torch.testing.assert_close(probs(logits, top_k=2), expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(probs(logits, top_k=1), t([[1.0, 0, 0, 0, 0]]), rtol=1e-12, atol=0.0)
    for off in (-1, 0, 5):
        torch.testing.assert_close(probs(logits, top_k=off), logits.softmax(-1), rtol=1e-12, atol=0.0)


def test_top_p_measures_mass_among_the_top_k_survivors():
    logits = t([[1 / 2, 1 / 4, 1 / 8, 1 / 8]]).log()
    # Top-2 leaves 2/3, 1/3; 1 − p = 0.4 then drops the 1/3. Top-p on the full distribution would keep both
    # (running sums 1/8, 1/4, 1/2 vs 0.4).
    torch.testing.assert_close(probs(logits, top_p=0.6, top_k=2), t([[1.0, 0, 0, 0]]), rtol=1e-12, atol=0.0)


# The whole pipeline, in order

# Position 1 of the sequence [0, 3, 1] predicts token 1; tokens 0 and 3 are seen. ρ = 3, τ = 1/2, top_p = 0.9.
#   logits      3·ln2    ln3    0    −ln2
#   penalty     ln2      ln3    0    −3·ln2      (0 and 3 seen: 3·ln2 / 3, −ln2 · 3)
#   temperature ln4      ln9    0    −6·ln2      → e^z ∝ 4, 9, 1, 1/64 = (256, 576, 64, 1)/897
#   top-p       running sums 1/897, 65/897 ≤ 0.1 drop tokens 3 and 2; 321/897 > 0.1 keeps 0 and 1
#   log-prob    ln(9/13)
# Top-p before the penalty or before the temperature would keep token 2 too (running sums 0.04, 0.12 and
# 0.02, 0.18 against 0.1): the order shows in the answer.
COMBINED_LOGITS = [3 * LN2, LN3, 0.0, -LN2]


def combined_case(temperature):
    logits = torch.zeros(1, 2, 4, dtype=F64)
    logits[0, 0] = 5.0  # position 0 (target 3) is outside the action mask
    logits[0, 1] = t(COMBINED_LOGITS)
    logits.requires_grad_()
    out = processed_logprobs(logits, torch.tensor([[0, 3, 1]]), temperature=temperature, top_p=0.9,
                             repetition_penalty=3.0, action_mask=torch.tensor([[0, 1]]))
    return logits, out


def test_penalty_then_temperature_then_top_p_by_hand():
    _, out = combined_case(temperature=0.5)
    torch.testing.assert_close(out, t([[0.0, math.log(9 / 13)]]), rtol=1e-12, atol=0.0)


def test_greedy_reports_the_penalised_distribution_without_temperature_or_top_p():
    # vLLM switches top-p off for τ < 1e-5 and skips the temperature: e^z ∝ 2, 3, 1, 1/8 → ln(3 / (49/8)).
    # With top-p 0.9 still on, token 3 (1/49 ≤ 0.1) would go and the answer would be ln(1/2).
    _, out = combined_case(temperature=0.0)
    torch.testing.assert_close(out, t([[0.0, math.log(24 / 49)]]), rtol=1e-12, atol=0.0)


def test_gradient_by_hand_flows_through_kept_logits_only():
    logits, out = combined_case(temperature=0.5)
    out.sum().backward()
    # d ln softmax(z)_1 / dz = onehot(1) − softmax over the kept tokens {0: 4/13, 1: 9/13}; dz/dl is
    # 1/τ = 2 for unseen token 1 and 1/(ρτ) = 2/3 for seen positive token 0; dropped tokens get 0.
    expected = torch.zeros(1, 2, 4, dtype=F64)
    expected[0, 1] = t([-(4 / 13) * (2 / 3), (4 / 13) * 2, 0.0, 0.0])
    torch.testing.assert_close(logits.grad, expected, rtol=1e-12, atol=0.0)


def test_gradcheck_with_penalty_top_k_and_top_p():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 6, dtype=F64, generator=generator)
    input_ids = torch.randint(0, 6, (1, 5), generator=generator)
    settings = dict(temperature=0.8, top_p=0.8, repetition_penalty=1.3, top_k=5)
    assert torch.isneginf(process_next_token_logits(logits[0], torch.zeros(4, 6, dtype=torch.bool),
                                                    0.8, 0.8, 1.3, 5)).any(), "precondition: some tokens dropped"
    kept = torch.isfinite(processed_logprobs(logits, input_ids, **settings))
    assert kept.any()
    action_mask = kept.long()  # gradcheck needs finite outputs; dropped targets are tested elsewhere
    torch.autograd.gradcheck(
        lambda x: processed_logprobs(x, input_ids, action_mask=action_mask, **settings),
        (logits.requires_grad_(),), eps=1e-6, atol=1e-8, rtol=1e-6)


# Agreement with the plain computation and with the one-step helper


def test_without_penalty_and_top_p_it_is_log_softmax_of_logits_over_temperature():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 9, dtype=F64, generator=generator) * 3
    input_ids = torch.randint(0, 9, (3, 7), generator=generator)
    for temperature in (0.7, 1.0, 1.5):
        expected = token_logprobs(logits / temperature, input_ids[:, 1:])
        got = processed_logprobs(logits, input_ids, temperature, top_p=1.0, repetition_penalty=1.0)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_sequence_log_probs_equal_the_one_step_helper_on_seen_sets_built_by_hand():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 8, 11, dtype=F64, generator=generator) * 2
    input_ids = torch.randint(0, 6, (2, 9), generator=generator)  # small ids: plenty of repeats
    settings = dict(temperature=0.8, top_p=0.85, repetition_penalty=1.3, top_k=6)
    got = processed_logprobs(logits, input_ids, **settings)
    for b in range(2):
        for pos in range(8):
            seen = torch.zeros(1, 11, dtype=torch.bool)
            seen[0, input_ids[b, :pos + 1]] = True
            z = process_next_token_logits(logits[b, pos][None], seen, **settings)
            assert torch.equal(got[b, pos], z.log_softmax(-1)[0, input_ids[b, pos + 1]])


def test_at_selected_positions_alone_in_chunks_equals_the_one_step_helper(monkeypatch):
    """processed_logprobs_at (a PPO role's response tokens: actors/policy.py) from the selected positions' logits
    alone, in chunks of 2 positions, gives the one-step helper's log-prob at each, row-major."""
    monkeypatch.setattr(sampling, "CHUNK_ELEMENTS", 2 * 11)
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 6, 11, dtype=F64, generator=generator) * 2
    input_ids = torch.randint(0, 6, (3, 7), generator=generator)
    selected = torch.zeros(3, 6, dtype=torch.bool)
    selected[0, 2:5], selected[2, 1:] = True, True  # row 1: nothing
    settings = dict(temperature=0.8, top_p=0.85, repetition_penalty=1.3, top_k=6)
    got = processed_logprobs_at(logits[selected], input_ids, selected, **settings)
    expected = []
    for b, pos in selected.nonzero().tolist():
        seen = torch.zeros(1, 11, dtype=torch.bool)
        seen[0, input_ids[b, :pos + 1]] = True
        z = process_next_token_logits(logits[b, pos][None], seen, **settings)
        expected.append(z.log_softmax(-1)[0, input_ids[b, pos + 1]])
    assert got.shape == (8,) and torch.equal(got, torch.stack(expected))
    # No selected position (a mini-batch without a response token): empty, yet joined to the graph, so a loss built
    # on it alone can still backward (to zero gradients).
    none, leaf = torch.zeros_like(selected), logits.clone().requires_grad_()
    empty = processed_logprobs_at(leaf[none], input_ids, none, **settings)
    assert empty.shape == (0,) and empty.requires_grad
    empty.sum().backward()
    assert torch.equal(leaf.grad, torch.zeros_like(leaf))


# Masks, precision, errors


def test_targets_outside_the_nucleus_are_minus_inf_unless_masked_and_masked_ones_stay_nan_free():
    # top_p 0.9: position 0 keeps only token 0; position 1 keeps tokens 1 and 2 (e^5 : e^4).
    logits = t([[[5.0, 0.0, 0.0], [0.0, 5.0, 4.0], [0.0, 0.0, 5.0]]]).requires_grad_()
    unmasked = processed_logprobs(logits, torch.tensor([[0, 2, 1, 2]]), 1.0, top_p=0.9)
    assert torch.isneginf(unmasked[0, 0])
    input_ids = torch.tensor([[0, 2, 1, -100]])  # −100: padding beyond the attention mask
    out = processed_logprobs(logits, input_ids, 1.0, top_p=0.9, attention_mask=torch.tensor([[1, 1, 1, 0]]),
                             action_mask=torch.tensor([[0, 1, 0]]))
    torch.testing.assert_close(out, t([[0.0, -math.log1p(math.exp(-1.0)), 0.0]]), rtol=1e-12, atol=0.0)
    out.sum().backward()
    expected = torch.zeros_like(logits)
    expected[0, 1, 1:] = t([1 / (1 + math.e), -1 / (1 + math.e)])  # onehot(1) − (e/(1+e), 1/(1+e)) on {1, 2}
    torch.testing.assert_close(logits.grad, expected, rtol=1e-12, atol=0.0)


def test_low_precision_logits_are_processed_in_float32():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 8, generator=generator).to(torch.bfloat16)
    input_ids = torch.randint(0, 8, (2, 5), generator=generator)
    settings = dict(temperature=0.7, top_p=0.9, repetition_penalty=1.2)
    got = processed_logprobs(logits, input_ids, **settings)
    assert got.dtype == torch.float32
    assert torch.equal(got, processed_logprobs(logits.float(), input_ids, **settings))


def test_misaligned_input_ids_are_refused_with_the_expected_shape():
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\+1\] = \[2, 4\].*got \[2, 3\]"):
        processed_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), 1.0)


def test_fill_dropped_takes_the_behaviour_log_prob_only_where_pi_old_lost_a_response_token():
    inf = float("inf")
    old = torch.tensor([[-0.5, -inf, -1.0], [-inf, -2.0, 0.0]], dtype=torch.float64)
    behaviour = torch.tensor([[-0.6, -3.0, -1.1], [-4.0, -2.1, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    filled, share = fill_dropped(old, behaviour, mask)
    # Row 0, token 1 was cut by the trainer's top-p: the engine's -3.0. Row 1, token 0 is off the mask: left alone.
    assert filled.tolist() == [[-0.5, -3.0, -1.0], [-inf, -2.0, 0.0]]
    assert share.item() == pytest.approx(1 / 4, rel=1e-12)
    assert fill_dropped(old[:, :0], behaviour[:, :0], mask[:, :0])[1].item() == 0.0


def test_a_row_sampled_by_older_weights_keeps_the_newer_policys_cut_for_the_rollout_correction():
    """ppo.async_rollouts with tis / mask: row 1 was sampled one update behind, so its −inf is the updated policy's
    own verdict (ratio 0): left for the correction, which then weights it 0 (tis) or drops it (mask), while the
    ratio's π_old becomes finite (finite_old) so the surrogate stays a number. Filled, it read as ratio 1: no
    drift. Row 0 (same weights) is filled as before."""
    from actors.algo import clipped_policy_loss
    from actors.algo.rollout_correction import ROLLOUT_CORRECTIONS
    from actors.algo.sampling import finite_old

    inf = float("inf")
    old = torch.tensor([[-0.5, -inf], [-inf, -1.0]], dtype=torch.float64)
    behaviour = torch.tensor([[-0.6, -3.0], [-4.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    filled, share = fill_dropped(old, behaviour, mask, rows=torch.tensor([True, False]))
    assert filled.tolist() == [[-0.5, -3.0], [-inf, -1.0]]
    assert share.item() == pytest.approx(1 / 4, rel=1e-12)
    tis = ROLLOUT_CORRECTIONS.get("tis")(filled, behaviour, mask, 2.0)
    assert tis.token_weights.flatten().tolist() == pytest.approx([math.exp(0.1), 1.0, 0.0, 1.0], rel=1e-12)
    masked = ROLLOUT_CORRECTIONS.get("mask")(filled, behaviour, mask, 2.0)
    assert masked.mask.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    ratio_old = finite_old(filled, behaviour, mask)
    assert ratio_old.tolist() == [[-0.5, -3.0], [-4.0, -1.0]]
    logp = torch.tensor([[-0.4, -2.0], [-3.0, -1.2]], dtype=torch.float64, requires_grad=True)
    loss, _ = clipped_policy_loss(logp, ratio_old, torch.ones(2, 2, dtype=torch.float64), mask, 0.2,
                                  token_weights=tis.token_weights)
    loss.backward()
    assert torch.isfinite(loss) and logp.grad[1, 0].item() == 0.0 and torch.isfinite(logp.grad).all()


def test_sample_seeds_of_large_batches_do_not_collide_across_calls():
    """Linearly, index 10,007 of one call had the seed of index 0 of the next: two samples on one random stream."""
    from actors.rollout.sample import sample_seed

    assert sample_seed(7, 5, 3) == 7 * 1_000_003 + 5 * 10_007 + 3  # small indices keep their seeds
    assert sample_seed(7, 5, 10_007) != sample_seed(7, 6, 0)
    assert sample_seed(42, 0, 10_012) != sample_seed(42, 1, 5)
    big = {sample_seed(1, calls, index) for calls in range(3) for index in range(10_000, 30_000)}
    assert len(big) == 3 * 20_000 and all(0 < s < 2**63 for s in big)
    assert big.isdisjoint(sample_seed(1, calls, index) for calls in range(50) for index in range(100))
