"""pass@k (Chen et al. 2021) against the binomial form, and hand-computed cases."""

import math

import pytest
import torch

from actors.algo import mean_pass_at_k, pass_at_k


def test_pass_at_k_by_hand():
    # n = 5 answers, c = 2 right, k = 2 drawn: 1 − C(3, 2) / C(5, 2) = 1 − 3/10.
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25, abs=1e-15)  # pass@1 is c / n
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 1, 4) == 1.0  # any success among all n answers
    assert pass_at_k(6, 3, 4) == 1.0  # n − c = 3 < k: every draw of 4 holds a success


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_pass_at_k_equals_the_binomial_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_mean_pass_at_k_averages_over_prompts():
    solved = torch.tensor([[True, False, False, False], [False, False, False, False], [True, True, False, True]])
    # pass@1 per prompt: 1/4, 0, 3/4; pass@2: 1 − C(3,2)/C(4,2) = 1/2, 0, 1.
    assert mean_pass_at_k(solved, 1) == pytest.approx((0.25 + 0 + 0.75) / 3, abs=1e-15)
    assert mean_pass_at_k(solved, 2) == pytest.approx((0.5 + 0 + 1) / 3, abs=1e-15)


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError, match="0 <= c <= n and 0 < k <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="0 <= c <= n and 0 < k <= n"):
        pass_at_k(3, 1, 4)
