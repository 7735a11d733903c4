"""Role → placement group: each Ray role gets its bundles (one per rank), packed or spread across nodes.

Roles that name the same colocation group share one placement group; a role with a node resource (a custom
resource such as `rollout_node` that only some nodes declare) only lands on those nodes. A plan that the
cluster can never satisfy (too few resources in total, a bundle no node can hold, STRICT_SPREAD over too few
nodes, STRICT_PACK larger than any node) fails at once with the missing resources named; a feasible plan
that is not yet free fails after `timeout_s` instead of waiting forever.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from common.errors import PlacementError


@dataclass(frozen=True)
class RoleResources:
    role: str
    ranks: int
    cpus: float = 1.0
    gpus: float = 0.0
    node_resource: str | None = None  # bundles also take this custom resource: only nodes declaring it qualify
    node_resource_amount: float = 1.0

    def bundles(self) -> list[dict]:
        bundle = {"CPU": self.cpus} if self.cpus else {}  # no CPUs: the planner's GPU-only layout check
        if self.gpus:
            bundle["GPU"] = self.gpus
        if self.node_resource:
            bundle[self.node_resource] = self.node_resource_amount
        return [dict(bundle) for _ in range(self.ranks)]


@dataclass(frozen=True)
class GroupPlan:
    """Roles that share one placement group, and how its bundles spread over nodes."""
    roles: tuple[RoleResources, ...]
    strategy: str

    def bundles(self) -> list[dict]:
        return [bundle for res in self.roles for bundle in res.bundles()]

    def names(self) -> str:
        return ", ".join(res.role for res in self.roles)


def plan_groups(roles: list[RoleResources], placement, default_strategy: str, colocate_all: bool) -> list[GroupPlan]:
    """Roles → placement groups from the per-role config (`PlacementConfig`): a role alone, or with the roles
    naming the same colocate_group (every role when `colocate_all`), each with its node resource."""
    members: dict[str, list[RoleResources]] = {}
    strategies: dict[str, str] = {}
    for res in roles:
        cfg = placement.roles()[res.role]
        key = cfg.colocate_group or ("all roles" if colocate_all else res.role)
        members.setdefault(key, []).append(replace(res, node_resource=cfg.node_resource,
                                                   node_resource_amount=cfg.node_resource_per_rank))
        if cfg.strategy:
            strategies[key] = cfg.strategy
    return [GroupPlan(tuple(group), strategies.get(key, default_strategy)) for key, group in members.items()]


def reserve_roles(roles: list[RoleResources], ppo, grows: bool = False) -> tuple[dict, dict[str, list[int]]]:
    """Check the whole plan of a PPO run against the cluster's nodes, then reserve its placement groups. A cluster
    that `grows` (an autoscaler) is not held to its live nodes: the reservation asks it for more.

    Returns ({role: placement group}, {role: bundle indices}); nothing stays reserved when any group fails."""
    plans = plan_groups(roles, ppo.placement, ppo.placement_strategy, ppo.colocate)
    if not grows:
        check_plans(plans)
    reserved = []
    try:
        for plan in plans:
            reserved.append(reserve(list(plan.roles), plan.strategy, ppo.placement.timeout_s, grows))
    except PlacementError:
        for group, _ in reserved:
            release(group)
        raise
    groups, bundles = {}, {}
    for group, index in reserved:
        for role, indices in index.items():
            groups[role], bundles[role] = group, indices
    return groups, bundles


def check_plans(plans: list[GroupPlan]) -> None:
    """Fail at once when this cluster can never host these groups."""
    problem = plan_problem(plans, _live_nodes())
    if problem:
        raise PlacementError(f"{problem} (a cluster joined by address whose autoscaler adds nodes: set "
                             f"ray.autoscaling=true)")


def _live_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def plan_problem(plans: list[GroupPlan], nodes: list[dict[str, float]]) -> str | None:
    """Why a cluster of `nodes` (their total resources) can never host these groups, or None: the totals of all
    groups first, then each group node by node."""
    shortfall = _shortfall([res for plan in plans for res in plan.roles], _sum(nodes))
    if shortfall:
        return shortfall
    for plan in plans:
        problem = node_fit_problem(plan.bundles(), plan.strategy, nodes)
        if problem:
            return (f"roles {plan.names()} ({plan.strategy}) cannot be placed on this cluster's {len(nodes)} "
                    f"node(s): {problem}")
    return None


def node_fit_problem(bundles: list[dict], strategy: str, nodes: list[dict[str, float]]) -> str | None:
    """Why `bundles` can never be placed on `nodes` (their total resources) with `strategy`, or None.

    Only certain impossibilities are reported (no false alarms): a bundle that fits no node, STRICT_PACK
    larger than every node, STRICT_SPREAD over fewer nodes able to hold a bundle than there are bundles."""
    if strategy == "STRICT_PACK":
        need = _sum(bundles)
        if not any(_fits(need, node) for node in nodes):
            return f"STRICT_PACK needs one node with {_describe(need)}; {_largest(need, nodes)}"
        return None
    for bundle in bundles:
        if not any(_fits(bundle, node) for node in nodes):
            return f"no node can hold a bundle of {_describe(bundle)}; {_largest(bundle, nodes)}"
    if strategy == "STRICT_SPREAD":
        hosts = sum(any(_fits(bundle, node) for bundle in bundles) for node in nodes)
        if hosts < len(bundles):
            return (f"STRICT_SPREAD needs {len(bundles)} distinct nodes for its {len(bundles)} bundles, but only "
                    f"{hosts} node(s) can hold one")
    return None


def _fits(need: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(key, 0.0) + 1e-9 >= amount for key, amount in need.items())


def _sum(bundles: list[dict]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for key, amount in bundle.items():
            total[key] = total.get(key, 0.0) + amount
    return total


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{key} {amount:g}" for key, amount in resources.items())


def _largest(need: dict[str, float], nodes: list[dict[str, float]]) -> str:
    """The most any node has of each resource the bundle asks for: names what is missing where."""
    most = {key: max((node.get(key, 0.0) for node in nodes), default=0.0) for key in need}
    return f"the most one node has is {_describe(most)}"


def reserve(resources: list[RoleResources], strategy: str = "PACK", timeout_s: float = 60.0, grows: bool = False):
    """One placement group holding the bundles of every role in `resources` (colocated roles share one); on a
    cluster that `grows`, what its live nodes lack is left to the autoscaler for timeout_s.

    Returns (placement_group, {role: [bundle indices]})."""
    import ray
    from ray.util.placement_group import placement_group

    bundles, index = [], {}
    for res in resources:
        index[res.role] = list(range(len(bundles), len(bundles) + res.ranks))
        bundles.extend(res.bundles())
    if not grows:
        check_feasible(resources)
    # Named for `ray list placement-groups`; the suffix keeps names unique across runs sharing a cluster.
    name = f"rayalign-{'-'.join(r.role for r in resources)}-{uuid.uuid4().hex[:6]}"
    group = placement_group(bundles, strategy=strategy, name=name)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        problem = plan_problem([GroupPlan(tuple(resources), strategy)], _live_nodes()) if grows else None
        missing = f" ({problem}; the autoscaler added no node for it)" if problem else ""
        raise PlacementError(f"could not reserve {bundles} ({strategy}) for {', '.join(index)} within "
                             f"{timeout_s:.0f} s; cluster has {ray.available_resources()}{missing}")
    return group, index


def bundles_on_node(group, indices: list[int], node_id: str) -> bool:
    """Whether the bundles `indices` of a reserved placement group all lie on the node `node_id` (hex)."""
    from ray.util import placement_group_table

    where = placement_group_table(group)["bundles_to_node_id"]
    return all(where.get(index) == node_id for index in indices)


def release(group) -> None:
    import ray

    ray.util.remove_placement_group(group)


def check_feasible(resources: list[RoleResources]) -> None:
    """Fail at once when the whole cluster (not just what is free now) lacks what these roles need together."""
    import ray

    shortfall = _shortfall(resources, ray.cluster_resources())
    if shortfall:
        raise PlacementError(shortfall)


def _shortfall(resources: list[RoleResources], total: dict[str, float]) -> str | None:
    need = _sum([b for r in resources for b in r.bundles()])
    short = {k: (v, total.get(k, 0.0)) for k, v in need.items() if v > total.get(k, 0.0) + 1e-9}
    if not short:
        return None
    detail = ", ".join(f"{k}: need {v:g}, cluster has {have:g}" for k, (v, have) in short.items())
    return f"roles {', '.join(r.role for r in resources)} need more than this cluster has ({detail})"
