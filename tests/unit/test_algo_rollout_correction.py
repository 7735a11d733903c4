"""Rollout correction (π_old vs the rollout engine's π_behaviour): mismatch metrics, TIS, ratio masking."""

import math

import pytest
import torch

from actors.algo.policy_loss import clipped_policy_loss
from actors.algo.rollout_correction import ROLLOUT_CORRECTIONS, behaviour_mismatch

F64 = torch.float64
CAP = 2.0


def t(values):
    return torch.tensor(values, dtype=F64)


def log_of_exact_ratios(ratios):
    """Log-ratios whose exp is exactly each ratio, so the cap's edges are hit exactly, not ±1 ulp."""
    log_ratio = t([math.log(r) for r in ratios])
    assert torch.equal(torch.exp(log_ratio), t(ratios)), "precondition: exp(log ρ) must round-trip"
    return log_ratio


# ρ = exp(old − behaviour) per token, cap C = 2 → tis weight, truncated?; mask keeps?
#   2    (= C)     → 2,    no;   kept (bound is inside)
#   4    (> C)     → 2,    yes;  dropped
#   0.5  (= 1/C)   → 0.5,  no;   kept (bound is inside)
#   0.25 (< 1/C)   → 0.25, no;   dropped
#   1              → 1,    no;   kept
#   1.5            → 1.5,  no;   kept
#   padding: behaviour log-prob NaN → weight 1, mask stays 0
RATIOS = [2.0, 4.0, 0.5, 0.25, 1.0, 1.5]
MASK = [[1, 1, 1, 1, 1, 1, 0]]


def edge_case_inputs():
    old_logp = torch.cat([log_of_exact_ratios(RATIOS), t([-0.5])])[None]
    behaviour_logp = torch.cat([torch.zeros(6, dtype=F64), t([math.nan])])[None]
    return old_logp, behaviour_logp, torch.tensor(MASK)


def test_registry_names():
    assert ROLLOUT_CORRECTIONS.names() == ["mask", "none", "tis"]
    with pytest.raises(KeyError, match="Did you mean 'tis'"):
        ROLLOUT_CORRECTIONS.get("tiss")


def test_none_returns_the_mask_unchanged_and_no_weights():
    old_logp, behaviour_logp, mask = edge_case_inputs()
    weights, corrected, share = ROLLOUT_CORRECTIONS.get("none")(old_logp, behaviour_logp, mask, CAP)
    assert weights is None and corrected is mask and share.item() == 0.0


def test_tis_truncates_at_the_cap_and_leaves_the_cap_itself_alone():
    old_logp, behaviour_logp, mask = edge_case_inputs()
    weights, corrected, share = ROLLOUT_CORRECTIONS.get("tis")(old_logp, behaviour_logp, mask, CAP)
    assert torch.equal(weights, t([[2.0, 2.0, 0.5, 0.25, 1.0, 1.5, 1.0]]))
    assert corrected is mask
    assert share.item() == pytest.approx(1 / 6, rel=1e-12)


def test_mask_drops_ratios_outside_the_band_and_keeps_both_bounds():
    old_logp, behaviour_logp, mask = edge_case_inputs()
    weights, corrected, share = ROLLOUT_CORRECTIONS.get("mask")(old_logp, behaviour_logp, mask, CAP)
    assert weights is None
    assert torch.equal(corrected, torch.tensor([[1, 0, 1, 0, 1, 1, 0]]))
    assert share.item() == pytest.approx(2 / 6, rel=1e-12)


def test_tis_weights_carry_no_gradient():
    old_logp, behaviour_logp, mask = edge_case_inputs()
    old_logp.requires_grad_()
    behaviour_logp.requires_grad_()
    weights, _, _ = ROLLOUT_CORRECTIONS.get("tis")(old_logp, behaviour_logp, mask, CAP)
    assert not weights.requires_grad and weights.grad_fn is None


@pytest.mark.parametrize("method", ["tis", "mask"])
@pytest.mark.parametrize("cap", [1.0, 0.5, -2.0, math.nan])
def test_cap_must_exceed_one(method, cap):
    with pytest.raises(ValueError, match="cap must be > 1"):
        ROLLOUT_CORRECTIONS.get(method)(*edge_case_inputs(), cap)


def test_behaviour_mismatch_hand_values():
    old_logp, behaviour_logp, mask = edge_case_inputs()
    stats = behaviour_mismatch(old_logp, behaviour_logp, mask)
    assert stats["behaviour_kl"].item() == pytest.approx(sum(r - 1 - math.log(r) for r in RATIOS) / 6, rel=1e-12)
    # Σ log ρ = log(2·4·0.5·0.25·1·1.5) = log 1.5
    assert stats["behaviour_kl_k1"].item() == pytest.approx(-math.log(1.5) / 6, rel=1e-12)
    assert stats["ratio_outside_share"].item() == pytest.approx(2 / 6, rel=1e-12)  # 4 and 0.25; 2 and 0.5 inside
    assert stats["ratio_mean"].item() == pytest.approx(9.25 / 6, rel=1e-12)


def test_behaviour_mismatch_with_both_log_probs_nonzero_and_an_empty_selection():
    old_logp, behaviour_logp = t([[-1.0, -0.25]]), t([[-1.5, -0.25]])
    stats = behaviour_mismatch(old_logp, behaviour_logp, torch.ones(1, 2))
    # token 0: log ρ = 0.5 → k3 = e^0.5 − 1.5, k1 = −0.5; token 1: ρ = 1 → 0
    assert stats["behaviour_kl"].item() == pytest.approx((math.exp(0.5) - 1.5) / 2, rel=1e-12)
    assert stats["behaviour_kl_k1"].item() == pytest.approx(-0.25, rel=1e-12)
    assert stats["ratio_mean"].item() == pytest.approx((math.exp(0.5) + 1) / 2, rel=1e-12)
    empty = behaviour_mismatch(old_logp, behaviour_logp, torch.zeros(1, 2))
    assert all(value.item() == 0.0 for value in empty.values())


# End to end: policy ratio r = exp(logp − old_logp), clip 0.2, behaviour ratio ρ with C = 2 → weight w.
#   r = 1,   A = +2 → −2   (unclipped), ρ = 4   → w = 2   → −4
#   r = 1.5, A = +2 → −2.4 (clipped),   ρ = 0.5 → w = 0.5 → −1.2
#   r = 0.5, A = −1 → 0.8  (clipped),   ρ = 1   → w = 1   → 0.8
#   r = 1,   A = +1 → −1   (unclipped), ρ = 1.5 → w = 1.5 → −1.5
#   padding: behaviour log-prob NaN
# token-mean: (−4 − 1.2 + 0.8 − 1.5) / 4 = −1.475; gradient −w·A·r / 4 where unclipped, 0 where clipped.


def test_policy_loss_with_tis_weights_equals_the_hand_weighted_loss():
    logp = torch.cat([log_of_exact_ratios([1.0, 1.5, 0.5, 1.0]), t([0.3])])[None].requires_grad_()
    old_logp = torch.zeros_like(logp)
    behaviour_logp = torch.cat([-log_of_exact_ratios([4.0, 0.5, 1.0, 1.5]), t([math.nan])])[None]
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    weights, mask, _ = ROLLOUT_CORRECTIONS.get("tis")(old_logp, behaviour_logp, mask, CAP)

    loss, stats = clipped_policy_loss(logp, old_logp, t([[2.0, 2.0, -1.0, 1.0, 5.0]]), mask, 0.2,
                                      token_weights=weights)
    assert loss.item() == pytest.approx(-1.475, rel=1e-12)
    assert stats["clip_frac"].item() == 0.5
    loss.backward()
    torch.testing.assert_close(logp.grad, t([[-2 * 2 * 1 / 4, 0.0, 0.0, -1.5 * 1 * 1 / 4, 0.0]]), rtol=1e-12, atol=0)
