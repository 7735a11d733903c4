"""Krippendorff's α: how far annotators agree beyond chance (Krippendorff 2011, "Computing Krippendorff's
Alpha-Reliability").

A unit is one rated item and holds the values its annotators gave (any number, missing ones left out). Units
with fewer than 2 values are not pairable and are left out; n is the number of pairable values. From the
coincidence matrix o_ck = Σ_u (pairs (c, k) of distinct raters in u) / (m_u − 1) and its margins n_c:

    D_o = 1/n · Σ_c Σ_k o_ck δ²(c, k)                 observed disagreement
    D_e = 1/(n(n − 1)) · Σ_c Σ_k n_c n_k δ²(c, k)      disagreement expected by chance
    α   = 1 − D_o / D_e

Both sums are sums of δ² over ordered pairs of values (within a unit, weighted 1/(m_u − 1), and across all
pairable values), so each is computed from a metric's closed form for "δ² over every ordered pair of a set of
values" without building the matrix: interval δ² = (c − k)² sums to 2·m·Σ(v − v̄)², nominal δ² = [c ≠ k] to
m² − Σ_c m_c². α needs only each unit's values, never who gave them: anonymous ratings give the same α.
α = 1 is perfect agreement, 0 is chance level; it is undefined with fewer than 2 pairable values or when all
pairable values are equal (D_e = 0)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from statistics import fmean
from typing import Callable, Iterable, Sequence

from actors.algo.registry import Registry

PairSum = Callable[[Sequence[float]], float]  # Σ δ²(v_i, v_j) over ordered pairs i ≠ j of one set of values
METRICS: Registry[PairSum] = Registry("agreement metric")


@METRICS.register("interval")
def interval_pair_sum(values: Sequence[float]) -> float:
    mean = fmean(values)
    return 2.0 * len(values) * sum((v - mean) ** 2 for v in values)


@METRICS.register("nominal")
def nominal_pair_sum(values: Sequence[float]) -> float:
    return float(len(values) ** 2 - sum(m * m for m in Counter(values).values()))


@dataclass(frozen=True)
class Alpha:
    value: float | None  # None: undefined, `why` says so
    pairable_units: int
    pairable_values: int  # n
    why: str = ""


def krippendorff_alpha(units: Iterable[Sequence[float]], metric: str = "interval") -> Alpha:
    pair_sum = METRICS.get(metric)
    pairable = [list(unit) for unit in units if len(unit) >= 2]
    n = sum(len(unit) for unit in pairable)
    if n < 2:
        return Alpha(None, len(pairable), n, "fewer than 2 pairable values (no unit has 2 ratings)")
    values = [v for unit in pairable for v in unit]
    if len(set(values)) == 1:  # tested on the values: a float mean may leave D_e a rounding error above 0
        return Alpha(None, len(pairable), n, "no variance: every pairable value is the same")
    expected = pair_sum(values) / (n * (n - 1))
    observed = sum(pair_sum(unit) / (len(unit) - 1) for unit in pairable) / n
    return Alpha(1.0 - observed / expected, len(pairable), n)
