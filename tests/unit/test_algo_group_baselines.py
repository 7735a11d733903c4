"""Critic-free group advantages (GRPO, RLOO, REINFORCE++-baseline) against hand-computed numbers."""

import math

import pytest
import torch

from actors.algo.group_baselines import (GROUP_BASELINES, group_advantages, per_token, spread_groups,
                                        zero_spread_share)

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


# Two prompts, four responses each. Group 1: returns 1, 2, 3, 6 (mean 3); group 2: all 0.5.
RETURNS = t([1.0, 2.0, 3.0, 6.0, 0.5, 0.5, 0.5, 0.5])
STD_1 = math.sqrt((4 + 1 + 0 + 9) / 3)  # unbiased: squared deviations 4, 1, 0, 9 over G - 1 = 3


def close(actual, expected):
    torch.testing.assert_close(actual, t(expected), rtol=1e-12, atol=1e-12)


def test_grpo_divides_the_deviation_from_the_group_mean_by_the_group_std():
    eps = 1e-4
    close(group_advantages(RETURNS, 4, "grpo", eps),
          [-2 / (STD_1 + eps), -1 / (STD_1 + eps), 0.0, 3 / (STD_1 + eps), 0, 0, 0, 0])
    assert STD_1 == pytest.approx(2.1602468994692865)


def test_rloo_subtracts_the_mean_of_the_other_responses():
    # 1 - (2+3+6)/3, 2 - (1+3+6)/3, 3 - (1+2+6)/3, 6 - (1+2+3)/3
    close(group_advantages(RETURNS, 4, "rloo"), [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0, 0, 0, 0, 0])


def test_reinforce_baseline_subtracts_the_group_mean():
    close(group_advantages(RETURNS, 4, "reinforce_baseline"), [-2, -1, 0, 3, 0, 0, 0, 0])


def test_groups_do_not_leak_into_each_other():
    """Shifting one group's returns changes only that group's advantages."""
    shifted = RETURNS.clone()
    shifted[4:] += torch.tensor([10.0, 0.0, 0.0, 0.0], dtype=F64)
    for method in GROUP_BASELINES.names():
        before, after = group_advantages(RETURNS, 4, method), group_advantages(shifted, 4, method)
        torch.testing.assert_close(after[:4], before[:4], rtol=0, atol=0)
        assert not torch.equal(after[4:], before[4:])


def test_every_method_is_zero_mean_within_each_group():
    returns = torch.randn(6 * 5, dtype=F64)
    for method in GROUP_BASELINES.names():
        sums = group_advantages(returns, 5, method).view(6, 5).sum(dim=1)
        torch.testing.assert_close(sums, torch.zeros(6, dtype=F64), rtol=0, atol=1e-12)


def test_share_of_groups_that_teach_nothing():
    assert zero_spread_share(RETURNS, 4) == 0.5
    assert zero_spread_share(RETURNS, 2) == 0.5  # (1,2) (3,6) differ; (0.5,0.5) twice
    assert zero_spread_share(t([1.0, 1.0, 1.0, 1.0]), 2) == 1.0


def test_dynamic_sampling_keeps_exactly_the_groups_with_a_spread():
    assert spread_groups(RETURNS, 4).tolist() == [True, False]
    assert spread_groups(RETURNS, 2).tolist() == [True, True, False, False]
    assert spread_groups(t([0.0, 0.0, 1e-12, 0.0]), 2).tolist() == [False, True]  # the smallest difference ranks


def test_sequence_advantage_lands_on_every_response_token_and_nowhere_else():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    close(per_token(t([2.0, -1.0, 5.0]), mask), [[0, 2, 2, 0], [-1, -1, -1, -1], [0, 0, 0, 0]])


@pytest.mark.parametrize(("returns", "size", "message"), [
    (t([1.0, 2.0, 3.0]), 2, "do not split into groups of 2"),
    (t([1.0, 2.0]), 1, "at least 2 responses per prompt"),
    (t([[1.0, 2.0]]), 2, "one score per response"),
])
def test_malformed_groups_are_refused(returns, size, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(returns, size, "grpo")


def test_unknown_method_names_the_known_ones():
    with pytest.raises(KeyError, match="rloo"):
        group_advantages(RETURNS, 4, "ppo")
