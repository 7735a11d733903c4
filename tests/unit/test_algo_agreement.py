"""Krippendorff's α (actors/algo/agreement.py) against the published worked example and hand-computed cases."""

from __future__ import annotations

import pytest

from actors.algo.agreement import krippendorff_alpha

# Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability", the 4 coders × 12 units example
# (None = the coder did not rate that unit). Published: interval α = 0.849, nominal α = 0.743.
N = None
CODERS = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
          [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
          [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
          [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]
PUBLISHED_UNITS = [[v for v in unit if v is not None] for unit in zip(*CODERS)]


def test_published_example_interval():
    alpha = krippendorff_alpha(PUBLISHED_UNITS, "interval")
    assert round(alpha.value, 3) == 0.849
    # unit 12 has one value (coder B's 3): not pairable, so 11 units and n = 40 values, as published
    assert (alpha.pairable_units, alpha.pairable_values) == (11, 40)


def test_published_example_nominal():
    assert round(krippendorff_alpha(PUBLISHED_UNITS, "nominal").value, 3) == 0.743


def test_two_units_two_coders_by_hand():
    # Units [1, 2] and [3, 3]; n = 4. Sums over ordered pairs of values:
    #   interval: D_o = (1/4)·[(1−2)² + (2−1)²]/(2−1) = 0.5
    #             D_e = (1/(4·3))·2·[(1−2)² + (1−3)² + (1−3)² + (2−3)² + (2−3)² + (3−3)²] = 22/12 = 11/6
    #             α = 1 − 0.5 / (11/6) = 8/11
    #   nominal:  D_o = (1/4)·2/1 = 0.5; D_e = (4² − (1² + 1² + 2²))/(4·3) = 10/12; α = 1 − 0.5/(10/12) = 0.4
    units = [[1, 2], [3, 3]]
    assert krippendorff_alpha(units, "interval").value == pytest.approx(8 / 11, rel=1e-12)
    assert krippendorff_alpha(units, "nominal").value == pytest.approx(0.4, rel=1e-12)
    # a unit with one rating pairs with nothing: it changes nothing
    assert krippendorff_alpha([*units, [5]], "interval").value == pytest.approx(8 / 11, rel=1e-12)


def test_perfect_agreement_is_one():
    alpha = krippendorff_alpha([[1, 1], [3, 3, 3], [5.0, 5.0]])
    assert alpha.value == 1.0 and alpha.why == ""


@pytest.mark.parametrize("units, pairable_values, why", [
    ([], 0, "fewer than 2 pairable values"),
    ([[4], [5], [3]], 0, "fewer than 2 pairable values"),  # every record rated once
    ([[4, 4], [4, 4, 4], [2]], 5, "no variance"),  # the lone 2 is not pairable
    ([[0.1, 0.1, 0.1], [0.1, 0.1]], 5, "no variance"),  # equal floats whose mean is not exactly 0.1
])
def test_undefined_cases_say_why(units, pairable_values, why):
    alpha = krippendorff_alpha(units)
    assert alpha.value is None and alpha.pairable_values == pairable_values and why in alpha.why


def test_an_unknown_metric_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown agreement metric 'intervall'.*interval"):
        krippendorff_alpha([[1, 2]], "intervall")
