"""DPO variants, Bradley–Terry, pairwise accuracy and sequence log-probs on hand-computed numbers."""

import math

import pytest
import torch

from actors.algo.preference import (
    DPO_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    pairwise_accuracy,
    sequence_logprob,
)

F64 = torch.float64
LN2 = math.log(2.0)


def t(values):
    return torch.tensor(values, dtype=F64)


def policy_equals_reference():
    chosen, rejected = t([-12.0, -3.5, -40.0]), t([-10.0, -7.25, -41.0])
    return chosen, rejected, chosen.clone(), rejected.clone()


@pytest.mark.parametrize("variant, label_smoothing", [("sigmoid", 0.0), ("cdpo", 0.1), ("cdpo", 0.3)])
def test_logistic_variants_equal_ln2_when_policy_is_the_reference(variant, label_smoothing):
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        *policy_equals_reference(), beta=0.1, variant=variant, label_smoothing=label_smoothing
    )
    assert loss.item() == pytest.approx(LN2, rel=1e-12)
    assert (chosen_rewards == 0).all() and (rejected_rewards == 0).all()


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_equals_its_target_squared_when_policy_is_the_reference(beta):
    loss, _, _ = dpo_loss(*policy_equals_reference(), beta=beta, variant="ipo")
    assert loss.item() == pytest.approx((1 / (2 * beta)) ** 2, rel=1e-12)


# policy margin 2, reference margin 0 → h = 2; β = 0.5 → βh = 1
HAND = dict(
    policy_chosen=t([-10.0]), policy_rejected=t([-12.0]), ref_chosen=t([-11.0]), ref_rejected=t([-11.0])
)


def test_sigmoid_hand_value_and_implicit_rewards():
    loss, chosen_rewards, rejected_rewards = dpo_loss(**HAND, beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-12)
    assert loss.item() == pytest.approx(0.31326168751822286, rel=1e-12)
    torch.testing.assert_close(chosen_rewards, t([0.5]))
    torch.testing.assert_close(rejected_rewards, t([-0.5]))


def test_cdpo_hand_value():
    loss, _, _ = dpo_loss(**HAND, beta=0.5, variant="cdpo", label_smoothing=0.2)
    expected = 0.8 * math.log1p(math.exp(-1.0)) + 0.2 * math.log1p(math.exp(1.0))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss.item() == pytest.approx(0.5132616875182229, rel=1e-12)


def test_ipo_hand_value():
    loss, _, _ = dpo_loss(**HAND, beta=0.5, variant="ipo")
    assert loss.item() == pytest.approx((2.0 - 1.0) ** 2, rel=1e-12)


def test_loss_is_the_mean_over_pairs():
    loss, _, _ = dpo_loss(t([-10.0, -5.0]), t([-12.0, -5.0]), t([-11.0, -5.0]), t([-11.0, -5.0]), beta=0.5)
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.0)) + LN2) / 2, rel=1e-12)


@pytest.mark.parametrize("variant", ["sigmoid", "cdpo", "ipo"])
def test_gradient_pushes_chosen_up_and_rejected_down(variant):
    ref_chosen, ref_rejected = t([-5.0, -9.0]), t([-6.0, -8.0])
    policy_chosen = ref_chosen.clone().requires_grad_()
    policy_rejected = ref_rejected.clone().requires_grad_()
    loss, _, _ = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected,
        beta=0.1, variant=variant, label_smoothing=0.1,
    )
    loss.backward()
    # Gradient descent moves against the gradient: chosen log-prob rises, rejected falls.
    assert (policy_chosen.grad < 0).all()
    assert (policy_rejected.grad > 0).all()
    torch.testing.assert_close(policy_chosen.grad, -policy_rejected.grad)


def test_sigmoid_gradient_hand_value():
    # d/dπc of −log σ(β h) at h = 0 is −β σ(0) / B = −0.1 · 0.5 / 2
    chosen, rejected, ref_chosen, ref_rejected = (x[:2] for x in policy_equals_reference())
    chosen.requires_grad_()
    dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.1)[0].backward()
    torch.testing.assert_close(chosen.grad, t([-0.025, -0.025]), rtol=1e-12, atol=0)


def test_rewards_are_detached():
    policy_chosen = t([-1.0]).requires_grad_()
    _, chosen_rewards, _ = dpo_loss(policy_chosen, t([-2.0]), t([-1.5]), t([-1.5]))
    assert not chosen_rewards.requires_grad


@pytest.mark.parametrize(
    "kwargs, complaint", [(dict(beta=0.0), "beta"), (dict(label_smoothing=0.5), "label_smoothing")]
)
def test_dpo_rejects_bad_hyperparameters(kwargs, complaint):
    with pytest.raises(ValueError, match=complaint):
        dpo_loss(**HAND, **kwargs)


def test_unknown_variant_names_the_close_match():
    assert DPO_LOSSES.names() == ["cdpo", "ipo", "sigmoid"]
    with pytest.raises(KeyError, match="'sigmoid'"):
        dpo_loss(**HAND, variant="sigmod")


def test_bradley_terry_is_ln2_for_equal_scores():
    assert bradley_terry_loss(t([0.3, -2.0]), t([0.3, -2.0])).item() == pytest.approx(LN2, rel=1e-12)


def test_bradley_terry_hand_value():
    loss = bradley_terry_loss(t([2.0, 0.0]), t([0.5, 1.0]))
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert math.log1p(math.exp(-1.5)) == pytest.approx(0.2014132779827524, rel=1e-12)


def test_bradley_terry_gradient_separates_the_pair():
    chosen, rejected = t([0.0]).requires_grad_(), t([0.0]).requires_grad_()
    bradley_terry_loss(chosen, rejected).backward()
    assert chosen.grad.item() == pytest.approx(-0.5, rel=1e-12)
    assert rejected.grad.item() == pytest.approx(0.5, rel=1e-12)


def test_pairwise_accuracy_counts_strict_wins_only():
    assert pairwise_accuracy(t([3.0, 1.0, 2.0, 5.0]), t([1.0, 1.0, 3.0, 4.0])) == 0.5
    assert isinstance(pairwise_accuracy(t([1.0]), t([0.0])), float)
    assert pairwise_accuracy(t([]), t([])) == 0.0


def test_sequence_logprob_sums_response_tokens():
    token_logp = t([[-0.5, -1.0, -2.0, -4.0], [-8.0, -0.25, -0.125, -100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0]])
    torch.testing.assert_close(sequence_logprob(token_logp, mask), t([-3.5, -0.375]), rtol=1e-12, atol=0)
