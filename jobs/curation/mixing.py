"""Sampling to the category ratio (40/30/20/10 by default) with a total size target.

A category with fewer records than its target contributes all it has and is reported short; the others
stay at their targets rather than growing to fill the gap, so the shortfall shows in the achieved mix
instead of silently skewing it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class CategoryPlan:
    target_share: float
    target: int
    available: int

    @property
    def selected(self) -> int:
        return min(self.target, self.available)

    @property
    def short(self) -> bool:
        return self.available < self.target


@dataclass(frozen=True)
class MixPlan:
    target_size: int
    categories: dict[str, CategoryPlan]

    @property
    def size(self) -> int:
        return sum(c.selected for c in self.categories.values())

    @property
    def short(self) -> list[str]:
        return [name for name, c in self.categories.items() if c.short]

    def to_dict(self) -> dict:
        size = self.size
        return {
            "target_size": self.target_size,
            "achieved_size": size,
            "short_categories": self.short,
            "categories": {name: {"target_share": c.target_share, "target": c.target, "available": c.available,
                                  "achieved": c.selected,
                                  "achieved_share": round(c.selected / size, 4) if size else 0.0,
                                  "short": c.short}
                           for name, c in self.categories.items()},
        }


def plan_mix(available: dict[str, int], shares: dict[str, float], target_size: int | None) -> MixPlan:
    """Targets per category. Without a size target: the largest set that meets the ratio exactly with the
    records at hand (categories with no records at all are left out of that bound and reported short)."""
    if target_size is None:
        bounds = [available.get(c, 0) / s for c, s in shares.items() if s > 0 and available.get(c, 0) > 0]
        target_size = math.floor(min(bounds) + 1e-9) if bounds else 0
    targets = apportion(target_size, shares)
    return MixPlan(target_size, {c: CategoryPlan(shares[c], targets[c], available.get(c, 0)) for c in shares})


def apportion(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer targets summing to `total` (largest-remainder method; ties go to the earlier category). The shares
    are normalised first: the config allows a sum off 1 by 1e-6, which at millions of records is a record or two."""
    scale = sum(shares.values())
    exact = {c: total * s / scale for c, s in shares.items()}
    counts = {c: math.floor(x + 1e-9) for c, x in exact.items()}
    leftover = total - sum(counts.values())
    by_remainder = sorted(shares, key=lambda c: -(exact[c] - counts[c]))
    for c in by_remainder[:leftover]:
        counts[c] += 1
    return counts


def sample_mix(by_category: dict[str, list[dict]], plan: MixPlan, seed: int) -> list[dict]:
    """Each category's planned count, drawn with a per-category seeded RNG; rows keep their `seq` order."""
    chosen: list[dict] = []
    for name, category in plan.categories.items():
        rows = by_category.get(name, [])
        rng = random.Random(f"{seed}:{name}")
        chosen.extend(rng.sample(rows, category.selected))
    return sorted(chosen, key=lambda row: row["seq"])
