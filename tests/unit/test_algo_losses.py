"""Clipped policy and value losses, per-token log-probs, and shard ≡ whole-batch equivalence."""

import math

import pytest
import torch

from actors.algo.kl import kl_loss_term
from actors.algo.logprobs import entropy_from_logits, shift_for_causal_lm, token_logprobs
from actors.algo.loss_aggregation import LOSS_AGGREGATIONS
from actors.algo.policy_loss import POLICY_LOSSES, clipped_policy_loss
from actors.algo.value_loss import clipped_value_loss

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


def log_of_exact_ratios(ratios):
    """logp − old_logp whose exp is exactly each ratio, so the clip edges are hit exactly, not ±1 ulp."""
    log_ratio = t([math.log(r) for r in ratios])
    assert torch.equal(torch.exp(log_ratio), t(ratios)), "precondition: exp(log r) must round-trip"
    return log_ratio


# Policy loss, clip_range 0.25. Per token: ratio, advantage → expected loss, clipping active?
#   1.25 (upper edge), A=+2 → max(−2.5, −2.5) = −2.5, no
#   1.5,               A=+2 → max(−3.0, −2.5) = −2.5, yes
#   0.5,               A=+2 → max(−1.0, −1.5) = −1.0, no
#   0.75 (lower edge), A=−1 → max(0.75, 0.75) = 0.75, no
#   0.5,               A=−1 → max(0.5, 0.75)  = 0.75, yes
#   1.5,               A=−1 → max(1.5, 1.25)  = 1.5,  no
#   2.0 (masked),      A=+9 → ignored
RATIOS = [1.25, 1.5, 0.5, 0.75, 0.5, 1.5, 2.0]
ADVANTAGES = [2.0, 2.0, 2.0, -1.0, -1.0, -1.0, 9.0]
MASK = [1, 1, 1, 1, 1, 1, 0]
EXPECTED_LOSS = (-2.5 - 2.5 - 1.0 + 0.75 + 0.75 + 1.5) / 6


def edge_case_loss(**kwargs):
    logp = log_of_exact_ratios(RATIOS)[None].requires_grad_()
    old_logp = torch.zeros_like(logp)
    loss, stats = clipped_policy_loss(logp, old_logp, t([ADVANTAGES]), torch.tensor([MASK]), 0.25, **kwargs)
    return logp, loss, stats


def test_policy_loss_at_and_beyond_the_clip_edges():
    _, loss, stats = edge_case_loss()
    assert loss.item() == pytest.approx(EXPECTED_LOSS, rel=1e-12)
    assert loss.item() == pytest.approx(-0.5, rel=1e-12)
    assert float(stats["clip_frac"]) == pytest.approx(2 / 6, rel=1e-12)
    assert float(stats["ratio_mean"]) == pytest.approx((1.25 + 1.5 + 0.5 + 0.75 + 0.5 + 1.5) / 6, rel=1e-12)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in RATIOS[:6]) / 6
    assert float(stats["approx_kl"]) == pytest.approx(expected_kl, rel=1e-12)


def test_policy_loss_gradient_is_zero_where_clipped_and_minus_a_r_over_n_elsewhere():
    logp, loss, _ = edge_case_loss()
    loss.backward()
    grad = logp.grad[0]
    # d(−A·r)/d logp = −A·r; tokens 0 and 3 sit exactly on the edge, where either branch may carry it.
    assert grad[1].item() == 0.0 and grad[4].item() == 0.0
    assert grad[2].item() == pytest.approx(-2.0 * 0.5 / 6, rel=1e-12)
    assert grad[5].item() == pytest.approx(1.0 * 1.5 / 6, rel=1e-12)
    assert grad[6].item() == 0.0


def test_dual_clip_caps_a_negative_advantage_with_a_huge_ratio():
    logp = t([[math.log(100.0), math.log(2.0), math.log(100.0)]]).requires_grad_()
    advantages = t([[-1.0, -1.0, 1.0]])
    old_logp, mask = torch.zeros_like(logp), torch.ones(1, 3)
    loss, _ = clipped_policy_loss(logp, old_logp, advantages, mask, 0.2, dual_clip=3.0)
    # token 0: min(max(100, 0.8), 3) = 3; token 1: min(2, 3) = 2; token 2 (A > 0): max(−100, −1.2) = −1.2
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3, rel=1e-12)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(2.0 / 3, rel=1e-12)


def test_without_dual_clip_the_huge_ratio_is_unbounded():
    logp = t([[math.log(100.0)]])
    loss, _ = clipped_policy_loss(logp, torch.zeros_like(logp), t([[-1.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(100.0, rel=1e-12)


@pytest.mark.parametrize("dual_clip", [1.0, 0.5, -3.0])
def test_dual_clip_must_exceed_one(dual_clip):
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        edge_case_loss(dual_clip=dual_clip)


def test_policy_loss_on_an_all_masked_batch_is_zero_not_nan():
    logp = t([[0.3, -0.2]]).requires_grad_()
    loss, stats = clipped_policy_loss(logp, t([[0.0, 0.0]]), t([[1.0, 1.0]]), torch.zeros(1, 2))
    loss.backward()
    assert loss.item() == 0.0 and all(float(value) == 0.0 for value in stats.values())
    assert (logp.grad == 0).all()


def test_a_token_the_updated_nucleus_drops_has_ratio_zero_no_gradient_and_no_nan():
    """Processed (top_p) log-probs: a sampled token the updated policy's nucleus no longer holds has logp = −inf.
    Its ratio is 0; with A = 1 the unclipped −A·0 = 0 is the larger term, with A = −1 the clipped 0.8·|A| is: both
    finite, neither with a gradient. approx_kl is taken over the finite tokens and the dropped share is counted."""
    logp = torch.tensor([[math.log(1.1), -math.inf], [0.0, -math.inf]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 2, dtype=torch.float64)
    advantages = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    loss, stats = clipped_policy_loss(logp, old, advantages, mask)
    # Per token: −1.1, 0 (ratio 0, A = 1), −1, 0.8 (clipped, A = −1) → mean −1.3 / 4.
    assert loss.item() == pytest.approx(-1.3 / 4, rel=1e-12)
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[:, 1].tolist() == [0.0, 0.0]
    assert stats["approx_kl"].item() == pytest.approx(0.5 * math.log(1.1) ** 2 / 2, rel=1e-12)
    assert stats["dropped_share"].item() == 0.5


def test_policy_loss_registry():
    assert POLICY_LOSSES.get("ppo_clip") is clipped_policy_loss
    with pytest.raises(KeyError, match="'ppo_clip'"):
        POLICY_LOSSES.get("ppo-clip")


# Value loss, clip_range 0.25. Per token: v, v_old, R → clipped v, squared errors, max, clipping active?
#   1.5, 1.0, 2.0 → 1.25: 0.25 vs 0.5625 → 0.5625 yes
#   0.5, 1.0, 0.0 → 0.75: 0.25 vs 0.5625 → 0.5625 yes
#   1.5, 1.0, 1.0 → 1.25: 0.25 vs 0.0625 → 0.25   no
#   2.0, 2.0, 1.0 → 2.0:  1.0  vs 1.0    → 1.0    no
#   masked garbage
VALUES = [1.5, 0.5, 1.5, 2.0, 50.0]
OLD_VALUES = [1.0, 1.0, 1.0, 2.0, -50.0]
RETURNS = [2.0, 0.0, 1.0, 1.0, 0.0]
VALUE_MASK = [1, 1, 1, 1, 0]


def test_value_loss_hand_case():
    values = t([VALUES]).requires_grad_()
    loss, stats = clipped_value_loss(values, t([OLD_VALUES]), t([RETURNS]), torch.tensor([VALUE_MASK]), 0.25)
    assert loss.item() == pytest.approx(0.5 * (0.5625 + 0.5625 + 0.25 + 1.0) / 4, rel=1e-12)
    assert loss.item() == pytest.approx(0.296875, rel=1e-12)
    assert float(stats["clip_frac"]) == 0.5
    loss.backward()
    # Clipped tokens give no gradient; others 0.5 · 2(v − R) / 4.
    torch.testing.assert_close(values.grad, t([[0.0, 0.0, 0.125, 0.25, 0.0]]), rtol=1e-12, atol=0)


def test_value_loss_without_movement_is_half_mse():
    values = t([[1.0, 3.0]])
    loss, stats = clipped_value_loss(values, values.clone(), t([[0.0, 1.0]]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(0.5 * (1.0 + 4.0) / 2, rel=1e-12)
    assert float(stats["clip_frac"]) == 0.0


# Shard equivalence (house rule 3): losses normalised by the whole batch's token count, computed on two
# halves and summed, equal the whole-batch loss and its gradients.


def random_batch(seed=0, rows=6, length=7):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 1, 4, 0, 6, 3])
    positions = torch.arange(length)
    # Mix left- and right-padded rows, and one empty row.
    mask = torch.stack(
        [positions < n if i % 2 else positions >= length - n for i, n in enumerate(lengths.tolist())]
    )

    def randn(scale=1.0):
        return torch.randn(rows, length, dtype=F64, generator=generator) * scale

    return dict(
        logp=randn(0.3) - 2.0,
        old_logp=randn(0.3) - 2.0,
        advantages=randn(),
        values=randn(),
        old_values=randn(),
        returns=randn(),
        mask=mask,
    )


def policy_loss_fn(batch, logp, rows, normalizer):
    loss, _ = clipped_policy_loss(
        logp[rows], batch["old_logp"][rows], batch["advantages"][rows], batch["mask"][rows],
        clip_range=0.2, dual_clip=3.0, normalizer=normalizer,
    )
    return loss


def value_loss_fn(batch, values, rows, normalizer):
    loss, _ = clipped_value_loss(
        values[rows], batch["old_values"][rows], batch["returns"][rows], batch["mask"][rows],
        clip_range=0.2, normalizer=normalizer,
    )
    return loss


def kl_loss_fn(batch, logp, rows, normalizer):
    return kl_loss_term(logp[rows], batch["old_logp"][rows], batch["mask"][rows], 0.1, normalizer=normalizer)


@pytest.mark.parametrize(
    "loss_fn, trained",
    [(policy_loss_fn, "logp"), (value_loss_fn, "values"), (kl_loss_fn, "logp")],
)
def test_two_shards_summed_equal_the_whole_batch(loss_fn, trained):
    batch = random_batch()
    total_tokens = batch["mask"].sum().item()
    whole_rows, first_half, second_half = slice(0, 6), slice(0, 3), slice(3, 6)

    whole_input = batch[trained].clone().requires_grad_()
    whole = loss_fn(batch, whole_input, whole_rows, normalizer=None)
    whole.backward()

    shard_input = batch[trained].clone().requires_grad_()
    sharded = sum(loss_fn(batch, shard_input, half, total_tokens) for half in (first_half, second_half))
    sharded.backward()

    torch.testing.assert_close(sharded, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shard_input.grad, whole_input.grad, rtol=1e-12, atol=1e-12)
    assert whole_input.grad.abs().sum() > 0


def test_shard_means_without_normalizer_would_differ():
    # Guards the test above: the halves hold different token counts, so the normalizer is what matters.
    batch = random_batch()
    logp = batch["logp"]
    whole = policy_loss_fn(batch, logp, slice(0, 6), None)
    naive = sum(policy_loss_fn(batch, logp, half, None) for half in (slice(0, 3), slice(3, 6))) / 2
    assert abs(naive.item() - whole.item()) > 1e-3


# Loss aggregation modes and per-token weights in the policy loss (loss_aggregation.py, rollout_correction.py).


def test_policy_loss_under_each_aggregation_hand_case():
    # r = 1 everywhere, so each token's loss is −A. Row 0: A = 1, 2, 3; row 1: A = 4, then padding.
    logp = torch.zeros(2, 3, dtype=F64)
    advantages, mask = t([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    expected = {
        "token-mean": -10 / 4,
        "seq-mean-token-mean": -(2 + 4) / 2,
        "seq-mean-token-sum": -10 / 2,
        "seq-mean-token-sum-norm": -10 / (2 * 5),
    }
    assert sorted(expected) == LOSS_AGGREGATIONS.names()
    for aggregation, value in expected.items():
        loss, _ = clipped_policy_loss(logp, logp, advantages, mask, aggregation=aggregation, max_response_len=5)
        assert loss.item() == pytest.approx(value, rel=1e-12), aggregation


def test_token_weights_scale_the_loss_detached_and_nan_weights_on_padding_are_harmless():
    logp = t([[0.1, -0.2, 0.3]]).requires_grad_()
    weights = t([[2.0, 0.5, math.nan]]).requires_grad_()
    loss, _ = clipped_policy_loss(logp, torch.zeros_like(logp), t([[1.0, -1.0, 1.0]]), torch.tensor([[1, 1, 0]]),
                                  0.5, token_weights=weights)
    # Both ratios lie inside [0.5, 1.5]: loss = (2·(−e^0.1) + 0.5·e^−0.2) / 2.
    assert loss.item() == pytest.approx((-2 * math.exp(0.1) + 0.5 * math.exp(-0.2)) / 2, rel=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[-math.exp(0.1), 0.25 * math.exp(-0.2), 0.0]]), rtol=1e-12, atol=0)
    assert weights.grad is None


@pytest.mark.parametrize("aggregation", LOSS_AGGREGATIONS.names())
def test_two_shards_summed_equal_the_whole_batch_for_every_aggregation_with_token_weights(aggregation):
    batch = random_batch()
    generator = torch.Generator().manual_seed(1)
    weights = torch.rand(6, 7, dtype=F64, generator=generator) * 2
    weights = torch.where(batch["mask"], weights, torch.full_like(weights, math.nan))
    halves = (slice(0, 3), slice(3, 6))
    global_units = sum(LOSS_AGGREGATIONS.get(aggregation).units(batch["mask"][rows]) for rows in halves)

    def loss_fn(logp, rows, normalizer):
        loss, _ = clipped_policy_loss(
            logp[rows], batch["old_logp"][rows], batch["advantages"][rows], batch["mask"][rows],
            clip_range=0.2, dual_clip=3.0, normalizer=normalizer,
            aggregation=aggregation, max_response_len=7, token_weights=weights[rows],
        )
        return loss

    whole_input = batch["logp"].clone().requires_grad_()
    whole = loss_fn(whole_input, slice(0, 6), None)
    whole.backward()
    shard_input = batch["logp"].clone().requires_grad_()
    sharded = sum(loss_fn(shard_input, rows, global_units) for rows in halves)
    sharded.backward()

    torch.testing.assert_close(sharded, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shard_input.grad, whole_input.grad, rtol=1e-12, atol=1e-12)
    assert whole_input.grad.abs().sum() > 0


# Log-probs


def test_token_logprobs_hand_values():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = t([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    labels = torch.tensor([[1, 0]])
    torch.testing.assert_close(token_logprobs(logits, labels), t([[math.log(0.75), math.log(0.25)]]))


def test_token_logprobs_matches_log_softmax_gather():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, dtype=F64, generator=generator) * 4
    labels = torch.randint(0, 11, (3, 5), generator=generator)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, labels), expected, rtol=1e-12, atol=1e-12)


def test_token_logprobs_row_by_row_above_the_whole_batch_size_gives_the_same_numbers():
    from actors.algo.logprobs import WHOLE_BATCH_LOGITS

    generator = torch.Generator().manual_seed(2)
    vocab = WHOLE_BATCH_LOGITS // 128 + 1  # 2 x 64 positions of it: just over the size, so rows go one at a time
    logits = torch.randn(2, 64, vocab, generator=generator) * 4
    labels = torch.randint(0, vocab, (2, 64), generator=generator)
    by_rows = token_logprobs(logits, labels)
    whole = torch.cat([token_logprobs(logits[i:i + 1], labels[i:i + 1]) for i in range(2)])  # each row alone fits
    assert torch.equal(by_rows, whole)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(by_rows, expected, rtol=1e-5, atol=1e-5)


def test_token_logprobs_dtype_and_gradient():
    logits = torch.randn(2, 3, 7, dtype=torch.bfloat16, requires_grad=True)
    out = token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long))
    assert out.dtype == torch.float32
    out.sum().backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape
    assert token_logprobs(logits.detach().double(), torch.zeros(2, 3, dtype=torch.long)).dtype == F64


def test_entropy_hand_value_and_masked_vocabulary():
    logits = t([[[0.0, math.log(3.0)], [0.0, -math.inf]]])
    expected_first = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    entropy = entropy_from_logits(logits)
    torch.testing.assert_close(entropy, t([[expected_first, 0.0]]), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(t([[expected_first]]), t([[0.5623351446188083]]))


def test_entropy_of_uniform_logits_is_log_vocab():
    entropy = entropy_from_logits(torch.zeros(2, 3, 8, dtype=F64))
    torch.testing.assert_close(entropy, torch.full((2, 3), math.log(8), dtype=F64), rtol=1e-12, atol=0)


def test_shift_for_causal_lm_pairs_position_t_with_token_t_plus_1():
    logits = torch.arange(2 * 4 * 3, dtype=F64).reshape(2, 4, 3)
    input_ids = torch.tensor([[10, 11, 12, 13], [20, 21, 22, 23]])
    shifted_logits, labels = shift_for_causal_lm(logits, input_ids)
    assert torch.equal(shifted_logits, logits[:, :3])
    assert torch.equal(labels, torch.tensor([[11, 12, 13], [21, 22, 23]]))
