"""GAE and REINFORCE returns: closed forms (λ=0, λ=1), hand values, padding and gap invariance."""

import math

import pytest
import torch

from actors.algo.advantages import ADVANTAGE_ESTIMATORS, gae, reinforce

F64 = torch.float64
GAMMA = 0.9

# One 3-token response: rewards r, values V.
R = [1.0, 0.5, 2.0]
V = [0.3, 0.6, 0.9]


def t(values):
    return torch.tensor(values, dtype=F64)


def close(actual, expected):
    torch.testing.assert_close(actual, t(expected), rtol=1e-12, atol=1e-14)


def test_gae_lambda_zero_is_the_one_step_td_error():
    advantages, returns = gae(t([R]), t([V]), torch.ones(1, 3), GAMMA, 0.0)
    # A_t = r_t + γ V_(t+1) − V_t, with V after the last token = 0
    close(advantages, [[1.0 + 0.9 * 0.6 - 0.3, 0.5 + 0.9 * 0.9 - 0.6, 2.0 - 0.9]])
    close(advantages, [[1.24, 0.71, 1.1]])
    close(returns, [[1.54, 1.31, 2.0]])


def test_gae_lambda_one_is_the_discounted_return_minus_value():
    advantages, returns = gae(t([R]), t([V]), torch.ones(1, 3), GAMMA, 1.0)
    discounted_returns = [1.0 + 0.9 * 0.5 + 0.81 * 2.0, 0.5 + 0.9 * 2.0, 2.0]
    close(returns, [discounted_returns])
    close(returns, [[3.07, 2.3, 2.0]])
    close(advantages, [[3.07 - 0.3, 2.3 - 0.6, 2.0 - 0.9]])


def test_gae_intermediate_lambda_hand_value():
    advantages, _ = gae(t([R]), t([V]), torch.ones(1, 3), GAMMA, 0.95)
    a2 = 1.1
    a1 = 0.71 + 0.9 * 0.95 * a2
    a0 = 1.24 + 0.9 * 0.95 * a1
    close(advantages, [[a0, a1, a2]])
    close(advantages, [[2.6511775, 1.6505, 1.1]])


def test_gae_single_token_row_is_reward_minus_value():
    advantages, returns = gae(t([[9.0, 1.5, 9.0]]), t([[9.0, 0.4, 9.0]]), torch.tensor([[0, 1, 0]]), 1.0, 1.0)
    close(advantages, [[0.0, 1.1, 0.0]])
    close(returns, [[0.0, 1.5, 0.0]])


def test_gae_all_masked_row_is_zero_and_does_not_disturb_its_neighbour():
    rewards = t([R, [math.nan, 5.0, -3.0]])
    values = t([V, [1.0, math.inf, 2.0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    advantages, returns = gae(rewards, values, mask, GAMMA, 0.0)
    close(advantages, [[1.24, 0.71, 1.1], [0.0, 0.0, 0.0]])
    close(returns, [[1.54, 1.31, 2.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_left_padding_and_right_padding_give_the_same_response_values(lam):
    padded_right_rewards = t([R + [7.0, 7.0]])
    padded_left_rewards = t([[7.0, 7.0] + R])
    padded_right_values = t([V + [5.0, 5.0]])
    padded_left_values = t([[5.0, 5.0] + V])
    right = gae(padded_right_rewards, padded_right_values, torch.tensor([[1, 1, 1, 0, 0]]), GAMMA, lam)
    left = gae(padded_left_rewards, padded_left_values, torch.tensor([[0, 0, 1, 1, 1]]), GAMMA, lam)
    unpadded = gae(t([R]), t([V]), torch.ones(1, 3), GAMMA, lam)
    for right_out, left_out, unpadded_out in zip(right, left, unpadded):
        torch.testing.assert_close(right_out[:, :3], unpadded_out, rtol=1e-12, atol=0)
        torch.testing.assert_close(left_out[:, 2:], unpadded_out, rtol=1e-12, atol=0)
        assert (right_out[:, 3:] == 0).all() and (left_out[:, :2] == 0).all()


def test_gaps_inside_a_row_are_stepped_over():
    rewards = t([[1.0, 8.0, 0.5, 8.0, 2.0]])
    values = t([[0.3, 8.0, 0.6, 8.0, 0.9]])
    mask = torch.tensor([[1, 0, 1, 0, 1]])
    advantages, returns = gae(rewards, values, mask, GAMMA, 0.95)
    close(advantages, [[2.6511775, 0.0, 1.6505, 0.0, 1.1]])
    close(returns, [[2.6511775 + 0.3, 0.0, 1.6505 + 0.6, 0.0, 2.0]])


def test_rows_of_a_batch_are_independent():
    rewards = t([R, [0.0, 0.0, 1.0]])
    values = t([V, [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    advantages, _ = gae(rewards, values, mask, GAMMA, 1.0)
    close(advantages, [[2.77, 1.7, 1.1], [0.0, 0.9, 1.0]])


def test_reinforce_is_discounted_reward_to_go_without_baseline():
    rewards = t([[1.0, 8.0, 0.5, 2.0]])
    mask = torch.tensor([[1, 0, 1, 1]])
    advantages, returns = reinforce(rewards, t([[5.0, 5.0, 5.0, 5.0]]), mask, GAMMA, 0.0)
    close(returns, [[3.07, 0.0, 2.3, 2.0]])
    close(advantages, [[3.07, 0.0, 2.3, 2.0]])


def test_gae_gradients_do_not_flow_into_masked_inputs():
    values = t([V + [4.0]]).requires_grad_()
    advantages, returns = gae(t([R + [3.0]]), values, torch.tensor([[1, 1, 1, 0]]), GAMMA, 0.5)
    (advantages.sum() + returns.sum()).backward()
    assert values.grad[0, 3].item() == 0.0


def test_advantage_registry():
    assert ADVANTAGE_ESTIMATORS.names() == ["gae", "reinforce"]
    assert ADVANTAGE_ESTIMATORS.get("gae") is gae
    with pytest.raises(KeyError, match="'gae'"):
        ADVANTAGE_ESTIMATORS.get("gea")
