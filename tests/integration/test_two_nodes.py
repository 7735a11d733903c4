"""Two real Ray nodes on one machine: a `ray start --head` and a second `ray start --address` node (separate
process trees, loopback, their own ports and temp dirs, token authentication on). The PPO job goes in through
`python -m jobs.submit` (`ray job submit`), its placement config puts the vLLM engine on the second node and the
training ranks on the head, and `python -m jobs.status` shows the run's actors on both nodes. The reward service,
deployed with `serve deploy`, gets its replica pinned to the second node and still demands the token there: the
token travels with the deployment, not in the driver's environment."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from common.metrics import read_jsonl
from tests.conftest import POLICY_PATH, SHARED
from tests.helpers import (HEAD_PORTS, NODE_PORTS, REPO, VENV_BIN, free_port, job_env, start_ray_node, stop_ray_node,
                           wait_for)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SFT_DATA = SHARED / "data" / "sft" / "llms-from-scratch" / "instruction-data.json"


def ray_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "ray"), *args], env=job_env(RAY_AUTH_MODE="token"), capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    logs = tmp_path_factory.mktemp("two-nodes")
    head_ports = {name: free_port() for name in HEAD_PORTS}
    worker_ports = {name: free_port() for name in NODE_PORTS}
    head_dir, worker_dir = f"/tmp/r2h{head_ports['port']}", f"/tmp/r2w{head_ports['port']}"
    api, gcs = f"http://127.0.0.1:{head_ports['dashboard-port']}", f"127.0.0.1:{head_ports['port']}"
    head = start_ray_node(head_dir, ["--head", "--num-cpus=3", '--resources={"train_node": 4}',
                                     "--dashboard-host=127.0.0.1", "--include-dashboard=true"],
                          head_ports, logs / "head.log")
    worker = None
    try:
        wait_for(lambda: ray_cli("job", "submit", "--address", api, "--", "python", "-c", "pass").returncode == 0,
                 180, interval=2, what="the head's job agent")
        worker = start_ray_node(worker_dir, [f"--address={gcs}", "--num-cpus=2", '--resources={"rollout_node": 1}'],
                                worker_ports, logs / "worker.log")
        wait_for(lambda: len(alive_nodes(api)) == 2, 120, interval=2, what="the second node to join")
        yield {"api": api, "nodes": alive_nodes(api)}
    finally:
        if worker is not None:
            stop_ray_node(worker, worker_dir)
        stop_ray_node(head, head_dir)


def alive_nodes(api: str) -> dict[str, str]:
    """{node id: "head" or "worker"} of the alive nodes, told apart by the custom resource each declares."""
    listed = ray_cli("list", "nodes", "--address", api, "--format", "json", "--detail")
    if listed.returncode != 0:
        return {}
    return {node["node_id"]: "worker" if "rollout_node" in node["resources_total"] else "head"
            for node in json.loads(listed.stdout) if node["state"] == "ALIVE"}


def test_one_ppo_run_spreads_its_actors_over_both_nodes(two_nodes, tmp_path):
    args = ["--config", "configs/tiny-cpu.yaml", f"model.path={POLICY_PATH}", f"ppo.prompt_files=[{SFT_DATA}]",
            f"run.output_root={tmp_path}", "ppo.steps=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8",
            "ppo.ppo_epochs=1", "ppo.max_prompts=32", "ppo.rollout.max_new_tokens=16", "ppo.export=false",
            "ppo.reward.rm_source=keyword", f"ppo.reward.safety_lexicon_dir={SHARED / 'data' / 'lexicons'}",
            "ppo.cpus_per_actor=0.5", "ppo.placement.rollout.node_resource=rollout_node",
            "ppo.placement.policy.node_resource=train_node", "ppo.placement.value.node_resource=train_node",
            "ppo.placement.reference.node_resource=train_node"]
    env = job_env()
    env.pop("RAY_AUTH_MODE", None)  # jobs.submit turns token mode on by itself
    submitted = subprocess.run([sys.executable, "-m", "jobs.submit", "--address", two_nodes["api"], "--",
                                "python", "-m", "jobs.ppo", *args], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=900)
    assert submitted.returncode == 0, (submitted.stdout + submitted.stderr)[-4000:]

    run_dir = tmp_path / "tiny-cpu" / "ppo"
    shown = subprocess.run([sys.executable, "-m", "jobs.status", "--run-dir", str(run_dir), "--address",
                            two_nodes["api"], "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    status = json.loads(shown.stdout)
    node_of = {(a["role"], a["rank"]): two_nodes["nodes"][a["node_id"]] for a in status["actors"]}
    assert node_of == {("rollout", 0): "worker", ("policy", 0): "head", ("value", 0): "head",
                       ("reference", 0): "head"}
    assert status["live_state"].startswith("from the cluster")
    assert {a["state"] for a in status["actors"]} == {"DEAD"}  # the finished job released every actor
    assert status["progress"]["step"] == 2 and status["progress"]["steps"] == 2
    # The engine is on the other node, so auto synced the weights over a gloo group, at every step.
    assert [row["sync/collective"] for row in read_jsonl(run_dir / "metrics.jsonl")] == [1.0, 1.0]


def test_a_reward_replica_on_the_worker_node_requires_the_token(two_nodes, tmp_path):
    from tests.integration.test_serve_rm_entrypoints import BODY, answers, serve_deploy, shipped_serve_config
    from tests.reward_helpers import make_reward_dir

    token_file = tmp_path / "token"
    token_file.write_text("two-node-secret\n")
    port = free_port()
    config_file = shipped_serve_config(tmp_path, make_reward_dir(tmp_path / "model"), port,
                                       **{"serve.node_resource": "rollout_node",
                                          "serve.auth_token_file": str(token_file)})
    api, url = two_nodes["api"], f"http://127.0.0.1:{port}"
    deployed = serve_deploy(config_file, api, token_mode=True)
    assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-3000:]
    try:
        wait_for(lambda: answers(f"{url}/healthz") == 200, 240, interval=1, what="/healthz to answer 200")
        listed = ray_cli("list", "actors", "--address", api, "--format", "json", "--detail", "--filter",
                         "state=ALIVE")
        replicas = [a for a in json.loads(listed.stdout) if a["class_name"].startswith("ServeReplica:reward")]
        assert [two_nodes["nodes"][a["node_id"]] for a in replicas] == ["worker"]
        refused = requests.post(f"{url}/score", json=BODY, timeout=60)
        assert refused.status_code == 401, refused.text
        wrong = requests.post(f"{url}/score", json=BODY, timeout=60, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, wrong.text
        answered = requests.post(f"{url}/score", json=BODY, timeout=60,
                                 headers={"Authorization": "Bearer two-node-secret"})
        assert answered.status_code == 200 and len(answered.json()["scores"]) == 1, answered.text
    finally:  # the PPO test on the same cluster needs the worker node's resource back
        subprocess.run([str(VENV_BIN / "serve"), "shutdown", "--address", api, "--yes"],
                       env=job_env(RAY_AUTH_MODE="token"), capture_output=True, text=True, timeout=120)
