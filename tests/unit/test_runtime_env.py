"""The environment a driver hands its embedded cluster's workers (cluster/runtime.py)."""

from __future__ import annotations

import os
import shutil
import sys

from cluster.runtime import tools_beside_interpreter_first


def test_this_pythons_scripts_come_first_once(monkeypatch):
    scripts = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", scripts, "/bin"]))
    tools_beside_interpreter_first()
    assert os.environ["PATH"].split(os.pathsep) == [scripts, "/usr/bin", "/bin"]
    tools_beside_interpreter_first()  # idempotent
    assert os.environ["PATH"].split(os.pathsep) == [scripts, "/usr/bin", "/bin"]


def test_deepspeeds_ninja_is_the_one_installed_with_it(monkeypatch):
    """DeepSpeed's JIT build takes the first ninja on PATH; the environment's own must win over a system one."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    tools_beside_interpreter_first()
    assert shutil.which("ninja") == os.path.join(os.path.dirname(sys.executable), "ninja")


def test_a_submitted_jobs_own_variables_are_left_out_of_the_runtime_env_it_joins_with(monkeypatch):
    """`ray job submit --runtime-env-json '{"env_vars": {"HF_HUB_OFFLINE": "1"}}'`: Ray refuses to merge two
    runtime_envs naming the same variable (ray.init failed, reported as an unreachable cluster); the submitted
    value stays, the other defaults go along."""
    import json

    from cluster.runtime import WORKER_ENV, joined_runtime_env

    for key, value in WORKER_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert joined_runtime_env() == {"env_vars": dict(WORKER_ENV)}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "0"}, "working_dir": "."}}))
    carried = joined_runtime_env()["env_vars"]
    assert "HF_HUB_OFFLINE" not in carried and carried == {k: v for k, v in WORKER_ENV.items() if k != "HF_HUB_OFFLINE"}
    # What ray.init does with the two under `ray job submit` (Ray's own merge: None is its refusal).
    from ray._private.worker import _merge_runtime_env

    submitted = {"env_vars": {"HF_HUB_OFFLINE": "0"}, "working_dir": "."}
    assert _merge_runtime_env(submitted, {"env_vars": dict(WORKER_ENV)}) is None
    assert _merge_runtime_env(submitted, joined_runtime_env())["env_vars"]["HF_HUB_OFFLINE"] == "0"


def test_autoscaling_with_an_embedded_cluster_is_refused_before_ray_starts(monkeypatch):
    """ray.autoscaling lifts the live-node check of PPO's placement plan: on an embedded cluster, which never grows,
    a plan it cannot hold would wait ppo.placement.timeout_s for nodes that never come."""
    import pytest

    from cluster import runtime
    from common.config import load_config
    from common.errors import ConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=r"^ray.autoscaling=true describes a cluster joined by address"):
        runtime.start(load_config(None, ["ray.autoscaling=true"]).ray)
