"""KL estimators, the KL-penalised reward, KL as a loss, and the fixed/adaptive/scheduled controllers."""

import math

import pytest
import torch

from actors.algo.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKL,
    FixedKL,
    ScheduledKL,
    kl_loss_term,
    kl_penalized_rewards,
    kl_per_token,
    make_kl_controller,
)

F64 = torch.float64
SPEC_SCHEDULE = [[0.2, 0.08], [0.8, 0.05], [1.0, 0.06]]


def t(values):
    return torch.tensor(values, dtype=F64)


# logp − ref_logp = [0.5, −1.0, 0.0]
LOGP = t([-1.0, -2.0, -0.5])
REF_LOGP = t([-1.5, -1.0, -0.5])


def test_k1_hand_values_and_sign():
    # Positive where the policy puts more mass than the reference, negative where less.
    expected = t([0.5, -1.0, 0.0])
    torch.testing.assert_close(kl_per_token(LOGP, REF_LOGP, "k1"), expected, rtol=1e-12, atol=0)


def test_k2_hand_values():
    expected = t([0.125, 0.5, 0.0])
    torch.testing.assert_close(kl_per_token(LOGP, REF_LOGP, "k2"), expected, rtol=1e-12, atol=0)


def test_k3_hand_values():
    # exp(x) − x − 1 at x = ref − logp = −0.5, 1.0, 0.0
    expected = t([math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])
    torch.testing.assert_close(kl_per_token(LOGP, REF_LOGP, "k3"), expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(expected, t([0.10653065971263342, 0.7182818284590451, 0.0]))


def test_default_estimator_is_k1():
    torch.testing.assert_close(kl_per_token(LOGP, REF_LOGP), t([0.5, -1.0, 0.0]))


def test_k3_and_k2_are_never_negative():
    generator = torch.Generator().manual_seed(0)
    logp = torch.randn(10_000, dtype=F64, generator=generator) * 5
    ref_logp = torch.randn(10_000, dtype=F64, generator=generator) * 5
    assert (kl_per_token(logp, ref_logp, "k3") >= 0).all()
    assert (kl_per_token(logp, ref_logp, "k2") >= 0).all()
    assert (kl_per_token(logp, ref_logp, "k1") < 0).any()


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased_under_policy_sampling(estimator):
    # E over tokens drawn from p equals KL(p ‖ q) exactly when the expectation is taken in closed form.
    p = t([0.5, 0.3, 0.2])
    q = t([0.2, 0.2, 0.6])
    exact_kl = (p * (p.log() - q.log())).sum()
    expectation = (p * kl_per_token(p.log(), q.log(), estimator)).sum()
    torch.testing.assert_close(expectation, exact_kl, rtol=1e-12, atol=0)


def test_k2_is_biased():
    p = t([0.5, 0.3, 0.2])
    q = t([0.2, 0.2, 0.6])
    exact_kl = (p * (p.log() - q.log())).sum()
    assert abs((p * kl_per_token(p.log(), q.log(), "k2")).sum() - exact_kl) > 1e-3


def test_unknown_estimator_names_the_close_match():
    with pytest.raises(KeyError, match="k1, k2, k3.*'k3'"):
        kl_per_token(LOGP, REF_LOGP, "k33")


# Rows: right-padded, left-padded, all masked. Padding holds garbage (even inf) that must not leak.
INF = math.inf
PEN_LOGP = t([[0.5, -0.2, 0.1, 9.0], [7.0, 0.3, 0.0, -0.4], [INF, 1.0, 2.0, 3.0]])
PEN_REF = torch.zeros(3, 4, dtype=F64)
PEN_MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
PEN_SCORES = t([2.0, -1.0, 5.0])


def test_penalized_rewards_hand_values_with_right_and_left_padding():
    rewards, kl = kl_penalized_rewards(PEN_SCORES, PEN_LOGP, PEN_REF, PEN_MASK, coef=0.1)
    expected_kl = t([[0.5, -0.2, 0.1, 0.0], [0.0, 0.3, 0.0, -0.4], [0.0, 0.0, 0.0, 0.0]])
    expected_rewards = t(
        [[-0.05, 0.02, -0.01 + 2.0, 0.0], [0.0, -0.03, 0.0, 0.04 - 1.0], [0.0, 0.0, 0.0, 0.0]]
    )
    torch.testing.assert_close(kl, expected_kl, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(rewards, expected_rewards, rtol=1e-12, atol=1e-15)


def test_penalized_rewards_same_response_under_left_and_right_padding():
    response_logp, response_ref = t([-1.0, -0.7, -2.0]), t([-1.2, -0.4, -1.9])
    pad = t([0.0])
    rewards = kl_penalized_rewards(
        t([1.5, 1.5]),
        torch.stack([torch.cat([response_logp, pad]), torch.cat([pad, response_logp])]),
        torch.stack([torch.cat([response_ref, pad]), torch.cat([pad, response_ref])]),
        torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]),
        coef=0.05,
        estimator="k3",
    )[0]
    torch.testing.assert_close(rewards[0, :3], rewards[1, 1:], rtol=1e-12, atol=0)
    assert rewards[0, 3].item() == rewards[1, 0].item() == 0.0


def test_penalized_rewards_uses_the_chosen_estimator():
    rewards, kl = kl_penalized_rewards(t([0.0]), LOGP[None], REF_LOGP[None], torch.ones(1, 3), 1.0, "k2")
    torch.testing.assert_close(kl, t([[0.125, 0.5, 0.0]]))
    torch.testing.assert_close(rewards, -t([[0.125, 0.5, 0.0]]))


def test_penalized_rewards_score_at_the_only_token_of_a_single_token_row():
    rewards, _ = kl_penalized_rewards(
        t([3.0]), t([[0.0, 0.4, 0.0]]), torch.zeros(1, 3, dtype=F64), torch.tensor([[0, 1, 0]]), 0.5
    )
    torch.testing.assert_close(rewards, t([[0.0, 3.0 - 0.2, 0.0]]), rtol=1e-12, atol=0)


def test_kl_loss_term_hand_value_and_normalizer():
    mask = torch.tensor([1, 1, 0])
    k3 = t([math.exp(-0.5) - 0.5, math.e - 2.0])
    expected_mean = k3.sum() / 2
    torch.testing.assert_close(
        kl_loss_term(LOGP, REF_LOGP, mask, coef=0.1), 0.1 * expected_mean, rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        kl_loss_term(LOGP, REF_LOGP, mask, coef=0.1, estimator="k1", normalizer=4), t(0.1 * (0.5 - 1.0) / 4)
    )


def test_kl_loss_term_gradient_pulls_policy_towards_reference():
    logp = t([-1.0, -3.0]).requires_grad_()
    kl_loss_term(logp, t([-2.0, -2.0]), torch.ones(2), coef=1.0).backward()
    # Gradient descent lowers logp where it is above the reference and raises it where below.
    assert logp.grad[0] > 0 and logp.grad[1] < 0


# Controllers


@pytest.mark.parametrize(
    "progress, coef",
    [(0.0, 0.08), (0.1999, 0.08), (0.2, 0.05), (0.5, 0.05), (0.7999, 0.05), (0.8, 0.06), (1.0, 0.06)],
)
def test_scheduled_controller_spec_default_on_both_sides_of_each_boundary(progress, coef):
    assert ScheduledKL(SPEC_SCHEDULE).value(progress) == coef


def test_scheduled_controller_clamps_outside_zero_one():
    controller = ScheduledKL(SPEC_SCHEDULE)
    assert controller.value(-0.5) == 0.08
    assert controller.value(1.5) == 0.06


def test_scheduled_controller_ignores_updates():
    controller = ScheduledKL(SPEC_SCHEDULE)
    controller.update(observed_kl=100.0, n_samples=1000)
    assert controller.value(0.5) == 0.05


@pytest.mark.parametrize(
    "schedule, complaint",
    [
        ([], "empty"),
        ([[0.5, 0.1], [0.5, 0.2], [1.0, 0.1]], "strictly increasing"),
        ([[0.8, 0.1], [0.3, 0.2], [1.0, 0.1]], "strictly increasing"),
        ([[0.0, 0.1], [1.0, 0.1]], "> 0"),
        ([[0.5, 0.1], [0.9, 0.2]], "end at progress 1.0"),
        ([[0.5, -0.1], [1.0, 0.2]], ">= 0"),
        ([[0.5, 0.1, 3], [1.0, 0.2]], "pairs"),
    ],
)
def test_scheduled_controller_rejects_bad_schedules(schedule, complaint):
    with pytest.raises(ValueError, match=complaint):
        ScheduledKL(schedule)


def test_fixed_controller_never_moves():
    controller = FixedKL(0.05)
    controller.update(observed_kl=10.0, n_samples=512)
    assert controller.value(0.0) == controller.value(1.0) == 0.05


def test_adaptive_controller_moves_up_when_kl_is_above_target_with_clipped_error():
    controller = AdaptiveKL(init_coef=0.1, target=6.0, horizon=10_000)
    controller.update(observed_kl=9.0, n_samples=512)  # error 0.5, clipped to 0.2
    assert controller.value(0.3) == pytest.approx(0.1 * (1 + 0.2 * 512 / 10_000), rel=1e-12)
    assert controller.value(0.3) == pytest.approx(0.101024, rel=1e-12)


def test_adaptive_controller_moves_down_when_kl_is_below_target():
    controller = AdaptiveKL(init_coef=0.1, target=6.0, horizon=10_000)
    controller.update(observed_kl=5.0, n_samples=512)  # error −1/6, inside the clip
    assert controller.value(0.3) == pytest.approx(0.09914666666666667, rel=1e-12)


def test_adaptive_controller_updates_compound():
    controller = AdaptiveKL(init_coef=0.1, target=6.0, horizon=10_000)
    controller.update(observed_kl=9.0, n_samples=512)
    controller.update(observed_kl=0.0, n_samples=1000)  # error −1, clipped to −0.2
    assert controller.coef == pytest.approx(0.101024 * (1 - 0.2 * 1000 / 10_000), rel=1e-12)


def test_adaptive_controller_holds_still_on_target():
    controller = AdaptiveKL(init_coef=0.1, target=6.0, horizon=10_000)
    controller.update(observed_kl=6.0, n_samples=512)
    assert controller.coef == 0.1


@pytest.mark.parametrize("kwargs", [dict(target=0.0, horizon=1.0), dict(target=1.0, horizon=0.0)])
def test_adaptive_controller_rejects_nonpositive_target_or_horizon(kwargs):
    with pytest.raises(ValueError):
        AdaptiveKL(init_coef=0.1, **kwargs)


def test_make_kl_controller_builds_each_registered_kind():
    assert KL_CONTROLLERS.names() == ["adaptive", "fixed", "scheduled"]
    fixed = make_kl_controller("fixed", coef=0.07, schedule=None, target=None, horizon=None)
    adaptive = make_kl_controller("adaptive", coef=0.2, schedule=None, target=6.0, horizon=100.0)
    scheduled = make_kl_controller(
        "scheduled", coef=0.05, schedule=SPEC_SCHEDULE, target=None, horizon=None
    )
    assert isinstance(fixed, FixedKL) and fixed.value(0.5) == 0.07
    assert isinstance(adaptive, AdaptiveKL) and adaptive.value(0.5) == 0.2 and adaptive.horizon == 100.0
    assert isinstance(scheduled, ScheduledKL) and scheduled.value(0.9) == 0.06


def test_make_kl_controller_says_what_is_missing():
    with pytest.raises(ValueError, match="target and horizon"):
        make_kl_controller("adaptive", coef=0.1)
    with pytest.raises(ValueError, match="schedule"):
        make_kl_controller("scheduled", coef=0.1)


def test_make_kl_controller_unknown_name_names_the_close_match():
    with pytest.raises(KeyError, match="known: adaptive, fixed, scheduled.*'adaptive'"):
        make_kl_controller("adaptve", coef=0.1)


def test_estimator_registry_lists_schulman_estimators():
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
