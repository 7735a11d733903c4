"""Role → placement-group plans from config, and the node-by-node check that rejects plans no cluster of
these nodes could ever host (pure: no Ray)."""

from __future__ import annotations

import pytest

from cluster.placement import RoleResources, node_fit_problem, plan_groups
from common.config import load_config
from common.errors import ConfigError

ROLES = [RoleResources("rollout", 2, 1.0), RoleResources("policy", 2, 1.0, 1.0), RoleResources("value", 1, 1.0, 1.0),
         RoleResources("reference", 1, 1.0, 1.0)]


def plan(*overrides: str):
    ppo = load_config(None, list(overrides)).ppo
    return {tuple(r.role for r in g.roles): g for g in plan_groups(ROLES, ppo.placement, ppo.placement_strategy,
                                                                   ppo.colocate)}


def test_every_role_alone_with_the_default_strategy():
    groups = plan("ppo.placement_strategy=SPREAD")
    assert set(groups) == {("rollout",), ("policy",), ("value",), ("reference",)}
    assert {g.strategy for g in groups.values()} == {"SPREAD"}


def test_colocation_group_shares_one_placement_group_and_its_strategy():
    groups = plan("ppo.placement.policy.colocate_group=train", "ppo.placement.value.colocate_group=train",
                  "ppo.placement.value.strategy=STRICT_PACK")
    train = groups[("policy", "value")]
    assert train.strategy == "STRICT_PACK"
    assert train.bundles() == [{"CPU": 1.0, "GPU": 1.0}] * 3
    assert groups[("rollout",)].strategy == "PACK"


def test_colocate_puts_every_role_in_one_group():
    assert list(plan("ppo.colocate=true")) == [("rollout", "policy", "value", "reference")]


def test_node_resource_is_asked_for_by_every_bundle_of_the_role():
    groups = plan("ppo.placement.rollout.node_resource=rollout_node",
                  "ppo.placement.rollout.node_resource_per_rank=0.5")
    assert groups[("rollout",)].bundles() == [{"CPU": 1.0, "rollout_node": 0.5}] * 2
    assert groups[("policy",)].bundles() == [{"CPU": 1.0, "GPU": 1.0}] * 2


def test_conflicting_strategies_in_one_colocation_group_are_refused_on_load():
    with pytest.raises(ConfigError, match="ppo.placement.colocate_group 'train' mixes policy.strategy=PACK, "
                                          "value.strategy=SPREAD"):
        plan("ppo.placement.policy.colocate_group=train", "ppo.placement.value.colocate_group=train",
             "ppo.placement.policy.strategy=PACK", "ppo.placement.value.strategy=SPREAD")


NODES = [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 4.0, "rollout_node": 2.0}]


@pytest.mark.parametrize("bundles, strategy, problem", [
    ([{"CPU": 1.0, "GPU": 1.0}] * 6, "PACK", None),  # spans both nodes
    ([{"CPU": 1.0, "GPU": 1.0}] * 6, "STRICT_PACK", "STRICT_PACK needs one node with CPU 6, GPU 6; the most one "
                                                    "node has is CPU 8, GPU 4"),
    ([{"CPU": 1.0}] * 3, "STRICT_SPREAD", "STRICT_SPREAD needs 3 distinct nodes for its 3 bundles, but only 2"),
    ([{"CPU": 1.0, "rollout_node": 1.0}] * 2, "STRICT_SPREAD", "STRICT_SPREAD needs 2 distinct nodes for its 2 "
                                                               "bundles, but only 1"),
    ([{"CPU": 1.0, "rollout_node": 1.0}] * 2, "PACK", None),
    ([{"CPU": 1.0, "GPU": 8.0}], "PACK", "no node can hold a bundle of CPU 1, GPU 8; the most one node has is "
                                         "CPU 8, GPU 4"),
])
def test_node_fit(bundles, strategy, problem):
    found = node_fit_problem(bundles, strategy, NODES)
    assert (found is None) if problem is None else (problem in found), found
