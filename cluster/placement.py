"""Role → placement group: each Ray role gets its bundles (one per rank), packed or spread across nodes.

A plan that the cluster cannot satisfy fails within `timeout_s` with the missing resources named, instead
of waiting forever for a node that will never come.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


class PlacementError(RuntimeError):
    """A role's resources cannot be reserved on this cluster."""


@dataclass(frozen=True)
class RoleResources:
    role: str
    ranks: int
    cpus: float = 1.0
    gpus: float = 0.0

    def bundles(self) -> list[dict]:
        bundle = {"CPU": self.cpus}
        if self.gpus:
            bundle["GPU"] = self.gpus
        return [dict(bundle) for _ in range(self.ranks)]


def reserve(resources: list[RoleResources], strategy: str = "PACK", timeout_s: float = 60.0):
    """One placement group holding the bundles of every role in `resources` (colocated roles share one).

    Returns (placement_group, {role: [bundle indices]})."""
    import ray
    from ray.util.placement_group import placement_group

    bundles, index = [], {}
    for res in resources:
        index[res.role] = list(range(len(bundles), len(bundles) + res.ranks))
        bundles.extend(res.bundles())
    check_feasible(resources)
    # Named for `ray list placement-groups`; the suffix keeps names unique across runs sharing a cluster.
    name = f"rayalign-{'-'.join(r.role for r in resources)}-{uuid.uuid4().hex[:6]}"
    group = placement_group(bundles, strategy=strategy, name=name)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        raise PlacementError(f"could not reserve {bundles} ({strategy}) for {', '.join(index)} within "
                             f"{timeout_s:.0f} s; cluster has {ray.available_resources()}")
    return group, index


def release(group) -> None:
    import ray

    ray.util.remove_placement_group(group)


def check_feasible(resources: list[RoleResources]) -> None:
    """Fail at once when the whole cluster (not just what is free now) lacks what these roles need together."""
    import ray

    roles = [r.role for r in resources]
    total = ray.cluster_resources()
    need: dict[str, float] = {}
    for bundle in (b for r in resources for b in r.bundles()):
        for key, amount in bundle.items():
            need[key] = need.get(key, 0.0) + amount
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if short:
        detail = ", ".join(f"{k}: need {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
        raise PlacementError(f"roles {', '.join(roles)} need more than this cluster has ({detail})")
