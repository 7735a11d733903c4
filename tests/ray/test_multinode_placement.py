"""PPO placement on a three-node cluster simulated on one machine: roles land on the nodes the config names
(node resources, colocation, STRICT_SPREAD), and plans the cluster can never host fail within seconds naming
what is missing. The cluster lives in a subprocess (tests/ray/multinode_scenarios.py): this process already
belongs to the session's Ray cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile

import psutil
import pytest

from tests.helpers import REPO, job_env

pytestmark = [pytest.mark.ray]


def run_scenarios(out_dir, *flags: str) -> dict:
    # A private Ray temp root keeps the cluster's sessions and its address file away from every other cluster.
    # Token authentication is on from the start: the nodes and the joining driver must agree on it.
    ray_tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    out = out_dir / "scenarios.json"
    env = job_env(RAY_TMPDIR=ray_tmp, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token")
    try:
        result = subprocess.run([sys.executable, "-m", "tests.ray.multinode_scenarios", str(out), *flags], cwd=REPO,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        return json.loads(out.read_text())
    finally:
        _kill_processes_mentioning(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _kill_processes_mentioning(marker: str) -> None:
    """Leftover daemons of that cluster only: every one of them carries the private temp root in its command."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in (proc.info["cmdline"] or [])):
            proc.kill()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    return run_scenarios(tmp_path_factory.mktemp("multinode"))


def test_roles_land_on_the_nodes_the_config_names(scenarios):
    nodes, placed = scenarios["nodes"], scenarios["affinity"]
    assert placed["rollout/0"] == placed["rollout/1"] == nodes["rollout"]
    assert placed["policy/0"] == placed["value/0"] == nodes["train"]  # one colocation group, STRICT_PACK
    assert placed["reference/0"] == nodes["head"]


def test_strict_spread_puts_every_rank_on_its_own_node(scenarios):
    assert sorted(scenarios["strict_spread"].values()) == sorted(scenarios["nodes"].values())


@pytest.mark.parametrize("case, message", [
    ("missing_resource", "gpu_rollout_node: need 1, cluster has 0"),
    ("affinity_over_capacity", "rollout_node: need 3, cluster has 2"),
    ("too_few_nodes", "STRICT_SPREAD needs 4 distinct nodes for its 4 bundles, but only 3 node(s) can hold one"),
    ("bundle_too_big", "no node can hold a bundle of CPU 3; the most one node has is CPU 2"),
])
def test_infeasible_plan_fails_fast_naming_what_is_missing(scenarios, case, message):
    outcome = scenarios[case]
    assert outcome["error"] is not None and message in outcome["error"], outcome
    assert outcome["seconds"] < 10
    assert outcome["groups_left"] == 0  # nothing stays reserved


def test_a_cluster_that_grows_is_asked_for_nodes_and_the_timeout_names_what_none_brought(scenarios):
    """ray.autoscaling=true: a plan the live nodes cannot hold is not refused at once (an autoscaler starts nodes
    for a pending placement group); here none comes, so the reservation gives up after ppo.placement.timeout_s
    (2 s), naming the shortfall, and leaves nothing reserved."""
    outcome = scenarios["bundle_too_big_waits"]
    assert outcome["seconds"] >= 2, outcome
    assert "within 2 s" in outcome["error"] and "no node can hold a bundle of CPU 3" in outcome["error"]
    assert "the autoscaler added no node for it" in outcome["error"]
    assert outcome["groups_left"] == 0


# Default tier (~25 s): the one run where PPO's roles, and the weight sync auto chooses for them, cross nodes.
def test_real_ppo_roles_follow_the_plan_and_step_across_nodes(tmp_path):
    result = run_scenarios(tmp_path, "--ppo")
    nodes, roles = result["nodes"], result["ppo"]["roles"]
    assert roles["rollout/0"] == roles["rollout/1"] == nodes["rollout"]
    assert roles["policy/0"] == roles["value/0"] == nodes["train"]
    assert roles["reference/0"] == nodes["head"]
    # auto chose the gloo group: the engines are on another node than policy rank 0.
    assert result["ppo"]["weight_sync"] == "gloo broadcast from policy rank 0 to 2 engine(s)"
    assert result["ppo"]["synced_over_group"] is True
    assert result["ppo"]["steps"] == 1  # generation, training and the weight sync crossed node boundaries
    assert result["ppo"]["groups_left"] == 0
