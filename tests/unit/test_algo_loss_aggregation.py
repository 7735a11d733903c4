"""Loss aggregation modes: hand-computed values and gradients, empty selections, shard ≡ whole batch."""

import math

import pytest
import torch

from actors.algo.loss_aggregation import LOSS_AGGREGATIONS

F64 = torch.float64
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
L_MAX = 5
INF, NAN = math.inf, math.nan

# Rows of unequal length; padding holds inf/NaN, which must neither leak into the loss nor its gradient.
#   row 0: 1, 2, 3      right-padded   sum 6, 3 tokens, mean 2
#   row 1: 4            both sides     sum 4, 1 token,  mean 4
#   row 2: (empty)                     not a sequence
#   row 3: −1, 0.5, 2.5, 6             sum 8, 4 tokens, mean 2
# 8 tokens, 3 sequences, total 18.
PER_TOKEN = [[1.0, 2.0, 3.0, INF], [NAN, -INF, 4.0, NAN], [NAN, INF, -INF, 5.0], [-1.0, 0.5, 2.5, 6.0]]
MASK = [[1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
EXPECTED = {
    "token-mean": 18 / 8,
    "seq-mean-token-mean": (2 + 4 + 2) / 3,
    "seq-mean-token-sum": 18 / 3,
    "seq-mean-token-sum-norm": 18 / (3 * L_MAX),
}
# d loss / d x for a token of each row (rows 0, 1, 3; padding and row 2 get 0).
EXPECTED_GRAD = {
    "token-mean": (1 / 8, 1 / 8, 1 / 8),
    "seq-mean-token-mean": (1 / 9, 1 / 3, 1 / 12),
    "seq-mean-token-sum": (1 / 3, 1 / 3, 1 / 3),
    "seq-mean-token-sum-norm": (1 / 15, 1 / 15, 1 / 15),
}


def hand_batch():
    return torch.tensor(PER_TOKEN, dtype=F64, requires_grad=True), torch.tensor(MASK)


def aggregate(mode, per_token, mask, global_units=None):
    return LOSS_AGGREGATIONS.get(mode).reduce(per_token, mask, global_units, max_response_len=L_MAX)


def test_registry_holds_exactly_the_four_modes():
    assert LOSS_AGGREGATIONS.names() == sorted(MODES)


@pytest.mark.parametrize("mode", MODES)
def test_hand_values_with_unequal_lengths_and_garbage_padding(mode):
    per_token, mask = hand_batch()
    loss = aggregate(mode, per_token, mask)
    assert loss.item() == pytest.approx(EXPECTED[mode], rel=1e-12)
    loss.backward()
    row0, row1, row3 = EXPECTED_GRAD[mode]
    mask_f = torch.tensor(MASK, dtype=F64)
    expected_grad = mask_f * torch.tensor([[row0], [row1], [0.0], [row3]], dtype=F64)
    torch.testing.assert_close(per_token.grad, expected_grad, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_units_count_tokens_or_nonempty_sequences(mode):
    expected = 8.0 if mode == "token-mean" else 3.0
    assert LOSS_AGGREGATIONS.get(mode).units(torch.tensor(MASK)) == expected


@pytest.mark.parametrize("mode", MODES)
def test_own_count_is_the_default_normaliser(mode):
    per_token, mask = hand_batch()
    units = LOSS_AGGREGATIONS.get(mode).units(mask)
    assert aggregate(mode, per_token, mask, units).item() == aggregate(mode, per_token, mask).item()


def test_modes_differ_on_unequal_lengths_and_sequence_means_agree_on_equal_ones():
    per_token, mask = hand_batch()
    values = {mode: aggregate(mode, per_token, mask).item() for mode in MODES}
    assert len({round(value, 9) for value in values.values()}) == len(MODES), values
    # Same length in every row: the mean of row means is the mean over tokens.
    equal = torch.tensor([[1.0, 2.0], [3.0, 10.0]], dtype=F64)
    full = torch.ones(2, 2)
    assert aggregate("seq-mean-token-mean", equal, full).item() == pytest.approx(4.0, rel=1e-12)
    assert aggregate("token-mean", equal, full).item() == pytest.approx(4.0, rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("global_units", [None, 0.0])
def test_empty_selection_gives_zero_and_zero_gradient(mode, global_units):
    per_token = torch.tensor([[NAN, INF], [1.0, -INF]], dtype=F64, requires_grad=True)
    loss = aggregate(mode, per_token, torch.zeros(2, 2), global_units)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(per_token.grad, torch.zeros(2, 2, dtype=F64))


@pytest.mark.parametrize("max_response_len", [None, 0])
def test_dr_grpo_mode_needs_a_max_response_len(max_response_len):
    per_token, mask = hand_batch()
    with pytest.raises(ValueError, match="'seq-mean-token-sum-norm' needs max_response_len"):
        LOSS_AGGREGATIONS.get("seq-mean-token-sum-norm").reduce(per_token, mask, None, max_response_len)


def test_other_modes_ignore_max_response_len():
    per_token, mask = hand_batch()
    assert LOSS_AGGREGATIONS.get("seq-mean-token-sum").reduce(per_token, mask).item() == 6.0


@pytest.mark.parametrize(
    "name, suggestion", [("seq-mean-token-sum-nrm", "seq-mean-token-sum-norm"), ("token_mean", "token-mean")]
)
def test_unknown_mode_names_the_closest_match(name, suggestion):
    with pytest.raises(KeyError, match=f"Did you mean '{suggestion}'"):
        LOSS_AGGREGATIONS.get(name)


# Shard equivalence (house rule 3): each shard divides by the unit count of the whole batch (what an
# all-reduce of `units` gives), so the shard losses sum to the whole-batch loss, gradients included.

LENGTHS = [7, 1, 4, 0, 6, 3]
SPLITS = {
    "two shards": (slice(0, 3), slice(3, 6)),
    "with an all-padding shard": (slice(0, 3), slice(3, 4), slice(4, 6)),
}


def random_batch(seed=0, length=7):
    generator = torch.Generator().manual_seed(seed)
    positions = torch.arange(length)
    mask = torch.stack([positions < n if i % 2 else positions >= length - n for i, n in enumerate(LENGTHS)])
    return torch.randn(len(LENGTHS), length, dtype=F64, generator=generator), mask


def loss_of(mode, x, mask, global_units=None):
    # A nonlinear per-token loss, so the gradient check sees more than the normaliser.
    return aggregate(mode, torch.sin(x) * x, mask, global_units)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", MODES)
def test_shard_losses_with_the_global_normaliser_sum_to_the_whole_batch_loss(mode, split):
    x, mask = random_batch()
    shards = SPLITS[split]
    aggregation = LOSS_AGGREGATIONS.get(mode)
    global_units = sum(aggregation.units(mask[rows]) for rows in shards)

    whole_input = x.clone().requires_grad_()
    whole = loss_of(mode, whole_input, mask)
    whole.backward()

    shard_input = x.clone().requires_grad_()
    sharded = sum(loss_of(mode, shard_input[rows], mask[rows], global_units) for rows in shards)
    sharded.backward()

    torch.testing.assert_close(sharded, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shard_input.grad, whole_input.grad, rtol=1e-12, atol=1e-12)
    assert whole_input.grad.abs().sum() > 0
    # Guards the check above: the shards hold different unit counts, so a mean of local losses is off.
    naive = sum(loss_of(mode, x[rows], mask[rows]) for rows in shards) / len(shards)
    assert abs(naive.item() - whole.item()) > 1e-3
