"""Placement scenarios on a three-node cluster simulated on one machine (ray.cluster_utils.Cluster).

Run as its own process (a process joins one Ray cluster only, and pytest's holds the session cluster):

    RAY_TMPDIR=/tmp/<unique> RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token \\
        python -m tests.ray.multinode_scenarios OUT.json [--ppo]

RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 stops Ray from rewriting 127.0.0.1 to the machine's address when the
driver joins (the simulated nodes listen on loopback only). RAY_AUTH_MODE must be set before the nodes start:
the driver turns token mode on when it joins, and actors fail to start on nodes that run without it.

Nodes: head {CPU 2, head_node 1}; worker "rollout" {CPU 2, rollout_node 2}; worker "train" {CPU 2,
train_node 2}. Writes OUT.json with, per scenario, where each actor landed or how the plan failed. The plans
are PPO's own (cluster.placement.reserve_roles from a PPO config); by default light probe actors fill the
bundles, with --ppo the real PPO roles do and run one step.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

NODES = {"head": {"num_cpus": 2, "resources": {"head_node": 1}},
         "rollout": {"num_cpus": 2, "resources": {"rollout_node": 2}},
         "train": {"num_cpus": 2, "resources": {"train_node": 2}}}
TINY_PPO = ["ppo.steps=1", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
            "ppo.max_prompts=16", "ppo.rollout.max_new_tokens=8", "ppo.reward.rm_source=keyword",
            "ppo.export=false", "ppo.cpus_per_actor=0.5"]
# Affinity by node resource, and a colocation group: engines on the rollout node, policy + value together on
# the train node, the reference on the head.
AFFINITY = ["ppo.placement.rollout.node_resource=rollout_node", "ppo.placement.policy.node_resource=train_node",
            "ppo.placement.value.node_resource=train_node", "ppo.placement.policy.colocate_group=train",
            "ppo.placement.value.colocate_group=train", "ppo.placement.policy.strategy=STRICT_PACK",
            "ppo.placement.reference.node_resource=head_node", "ppo.rollout.num_engines=2"]
PPO_ROLES = (("rollout", 2), ("policy", 1), ("value", 1), ("reference", 1))


def start_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "include_dashboard": False,
                                                            **NODES["head"]})
    node_ids = {"head": cluster.head_node.node_id}
    for name in ("rollout", "train"):
        node_ids[name] = cluster.add_node(node_ip_address="127.0.0.1", **NODES[name]).node_id
    cluster.wait_for_nodes()
    return cluster, node_ids


def config(*overrides: str, output_root: str = "/unused"):
    from common.config import load_config
    from tests.conftest import TINY_CPU

    return load_config(TINY_CPU, [f"run.output_root={output_root}", *TINY_PPO, *overrides])


class Probe:
    """A cheap actor that only says where it runs."""

    def where(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def probes_placed(roles: tuple[tuple[str, int], ...], *overrides: str) -> dict[str, str]:
    """Reserve PPO's plan for `roles` (role, ranks) under the config overrides, put a probe in every bundle and
    return {"role/rank": node id}."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from cluster.placement import RoleResources, release, reserve_roles

    ppo = config(*overrides).ppo
    groups, bundles = reserve_roles([RoleResources(role, ranks, cpus=0.25) for role, ranks in roles], ppo)
    try:
        probes = {f"{role}/{rank}": ray.remote(Probe).options(num_cpus=0.25, scheduling_strategy=(
            PlacementGroupSchedulingStrategy(groups[role], index))).remote()
            for role, indices in bundles.items() for rank, index in enumerate(indices)}
        return {key: ray.get(probe.where.remote()) for key, probe in probes.items()}
    finally:
        for group in {id(g): g for g in groups.values()}.values():
            release(group)


def real_ppo_placed() -> dict:
    """The real PPO roles (vLLM engines, DeepSpeed ranks, reference) placed by AFFINITY, then one step; the engines
    are on another node than the policy, so the default weight sync (auto) broadcasts over a gloo group."""
    from actors.ppo_supervisor import run_supervised
    from actors.roster import read_roster

    with tempfile.TemporaryDirectory() as output_root:
        cfg = config(*AFFINITY, output_root=output_root)
        loop, _, _ = run_supervised(cfg, cfg.run.output_dir("ppo"))
        roster = read_roster(cfg.run.output_dir("ppo"))
    return {"roles": {f"{a['role']}/{a['rank']}": a["node_id"] for a in roster["actors"]},
            "steps": loop.step_index, "groups_left": _live_placement_groups(),
            "weight_sync": loop.weight_sync.describe(), "synced_over_group": loop.weight_sync.last_collective}


def infeasible(*overrides: str, ranks: int = 1, cpus: float = 0.5, grows: bool = False) -> dict:
    """How long a plan the cluster can never host takes to fail, and the message (`grows`: as ray.autoscaling)."""
    from cluster.placement import RoleResources, reserve_roles
    from common.errors import PlacementError

    ppo = config(*overrides).ppo
    started = time.monotonic()
    try:
        reserve_roles([RoleResources("rollout", ranks, cpus), RoleResources("policy", 1, 0.5)], ppo, grows=grows)
    except PlacementError as exc:
        return {"seconds": time.monotonic() - started, "error": str(exc), "groups_left": _live_placement_groups()}
    return {"seconds": time.monotonic() - started, "error": None}


def _live_placement_groups() -> int:
    from ray.util import placement_group_table

    return sum(1 for group in placement_group_table().values() if group["state"] != "REMOVED")


def scenarios(node_ids: dict, with_ppo: bool) -> dict:
    if with_ppo:
        return {"nodes": node_ids, "ppo": real_ppo_placed()}
    return {"nodes": node_ids,
            "affinity": probes_placed(PPO_ROLES, *AFFINITY),
            "strict_spread": probes_placed((("rollout", 3),), "ppo.placement.rollout.strategy=STRICT_SPREAD"),
            "missing_resource": infeasible("ppo.placement.rollout.node_resource=gpu_rollout_node"),
            "too_few_nodes": infeasible("ppo.placement.rollout.strategy=STRICT_SPREAD", ranks=4, cpus=0.25),
            "bundle_too_big": infeasible(cpus=3.0),
            "bundle_too_big_waits": infeasible("ppo.placement.timeout_s=2", cpus=3.0, grows=True),
            "affinity_over_capacity": infeasible("ppo.placement.rollout.node_resource=rollout_node", ranks=3,
                                                 cpus=0.25)}


def main(out_path: str, with_ppo: bool) -> None:
    from cluster import runtime
    from common.config import RayConfig

    cluster, node_ids = start_cluster()
    try:
        runtime.start(RayConfig(address=cluster.address))
        Path(out_path).write_text(json.dumps(scenarios(node_ids, with_ppo), indent=2))
    finally:
        runtime.stop()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], "--ppo" in sys.argv[2:])
