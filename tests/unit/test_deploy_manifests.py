"""The launch artefacts under cluster/deploy/: the `ray up` cluster YAML passes Ray's own schema, the KubeRay
manifests carry what a cluster needs (image, GPUs, token auth, node labels), every file pins the Ray version
pyproject.toml pins, the clusters they describe can host the multi-node recipe's PPO plan, and each RayJob
entrypoint is a job module command line that resolves its config."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import tomllib

import pytest
import yaml

from cluster.placement import RoleResources, plan_groups, plan_problem
from common.config import load_config
from tests.helpers import REPO, job_env

DEPLOY = REPO / "cluster" / "deploy"
IMAGE_ROOT = "/app"  # where cluster/deploy/Dockerfile puts the checkout
RAYJOBS = {"ppo": DEPLOY / "kuberay" / "rayjob-ppo.yaml", "sft": DEPLOY / "kuberay" / "rayjob-sft.yaml"}


def ray_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==")[1] for d in deps if d.startswith("ray["))


def load(path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return load(DEPLOY / "kuberay" / "raycluster.yaml")


# ---- ray up ----------------------------------------------------------------------------------------------
def test_ray_up_yaml_passes_rays_schema_with_defaults_filled():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load(DEPLOY / "ray-cluster.yaml"))
    validate_config(config)  # what `ray up` checks before it touches the cloud
    assert config["head_node_type"] in config["available_node_types"]


def test_ray_up_nodes_start_with_token_auth_and_share_the_clients_token():
    config = load(DEPLOY / "ray-cluster.yaml")
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start
    assert "--head" in " ".join(config["head_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]


def test_every_artefact_uses_one_image_at_the_pinned_ray_version(raycluster):
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray_pin()}-py311-gpu" in dockerfile
    assert "pip install" in dockerfile and "[gpu]" in dockerfile
    image = load(DEPLOY / "ray-cluster.yaml")["docker"]["image"]
    assert raycluster["spec"]["rayVersion"] == ray_pin()
    assert {c["image"] for c in containers(raycluster["spec"])} == {image}


# ---- KubeRay ---------------------------------------------------------------------------------------------
def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_raycluster_has_gpu_worker_groups_and_token_auth(raycluster):
    assert (raycluster["apiVersion"], raycluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = raycluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert "containers" in spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) > 0
            assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]


def test_rayjobs_embed_the_raycluster_spec(raycluster):
    for path in RAYJOBS.values():
        job = load(path)
        assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
        assert job["spec"]["rayClusterSpec"] == raycluster["spec"], f"{path.name} drifted from raycluster.yaml"
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]


@pytest.mark.parametrize("job", sorted(RAYJOBS))
def test_rayjob_entrypoint_is_a_job_module_whose_config_resolves(job):
    argv = shlex.split(load(RAYJOBS[job])["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", f"jobs.{job}"]
    assert importlib.util.find_spec(argv[2]) is not None
    local = [arg.replace(IMAGE_ROOT, str(REPO)) for arg in argv[3:]]
    assert (REPO / local[local.index("--config") + 1]).is_file()
    # The real entry point, stopped after config resolution: flags, keys and values all valid.
    result = subprocess.run([sys.executable, "-m", argv[2], *local, "--print-config"], cwd=REPO, env=job_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load(result.stdout)["run"]["output_root"] == "/shared/outputs"


# ---- the clusters can host the multi-node recipe's PPO plan ------------------------------------------------
def multi_node_ppo_roles() -> tuple[list[RoleResources], object]:
    cfg = load_config(REPO / "configs" / "multi-node.yaml")
    ppo = cfg.ppo
    roles = [RoleResources("rollout", ppo.rollout.num_engines, ppo.cpus_per_actor, ppo.gpus_per_actor),
             RoleResources("policy", ppo.policy_workers, ppo.cpus_per_actor, ppo.gpus_per_actor),
             RoleResources("value", ppo.value_workers, ppo.cpus_per_actor, ppo.gpus_per_actor),
             RoleResources("reference", 1, ppo.cpus_per_actor, ppo.gpus_per_actor),
             RoleResources("reward", 1, ppo.cpus_per_actor, ppo.gpus_per_actor)]
    return roles, ppo


def kuberay_nodes(raycluster: dict) -> list[dict[str, float]]:
    nodes = []
    for group in raycluster["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        custom = json.loads(json.loads(group["rayStartParams"]["resources"]))  # KubeRay's quoted JSON string
        nodes += [{"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"]), **custom}] * group["replicas"]
    return nodes


def ray_up_nodes() -> list[dict[str, float]]:
    config = load(DEPLOY / "ray-cluster.yaml")
    gpus_per_instance = {"p4de.24xlarge": (96.0, 8.0)}
    nodes = []
    for name, node_type in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        cpus, gpus = gpus_per_instance[node_type["node_config"]["InstanceType"]]
        nodes += [{"CPU": cpus, "GPU": gpus, **node_type["resources"]}] * node_type["min_workers"]
    return nodes


@pytest.mark.parametrize("where", ["kuberay", "ray_up"])
def test_the_clusters_host_the_multi_node_ppo_plan(where, raycluster):
    roles, ppo = multi_node_ppo_roles()
    nodes = kuberay_nodes(raycluster) if where == "kuberay" else ray_up_nodes()
    plans = plan_groups(roles, ppo.placement, ppo.placement_strategy, ppo.colocate)
    assert plan_problem(plans, nodes) is None
