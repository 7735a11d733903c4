"""The same SFT entry point on a real `ray start --head` cluster with token authentication on: through
`ray job submit` and by joining with --address; and a clear, fast error for an unreachable address."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import POLICY_PATH, SHARED
from tests.helpers import (HEAD_PORTS, REPO, VENV_BIN, free_port, job_env, run_job, start_ray_node, stop_ray_node,
                           wait_for)

pytestmark = [pytest.mark.integration]
SFT_DATA = SHARED / "data" / "sft" / "llms-from-scratch" / "instruction-data.json"


def sft_args(output_root: Path) -> list[str]:
    # Under `ray job submit` the working directory is a copy in Ray's session folder, so shared data and
    # models are passed as absolute paths (as a user would on a real cluster).
    return ["--config", "configs/tiny-cpu.yaml", f"model.path={POLICY_PATH}", f"data.train_files=[{SFT_DATA}]",
            f"run.output_root={output_root}", "sft.max_steps=4", "sft.eval_every=2", "sft.save_every=100"]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real head node (separate processes, loopback) with Ray's token authentication explicitly on.

    Every port is chosen free, so it coexists with the session's embedded cluster and any other Ray."""
    ports = {name: free_port() for name in HEAD_PORTS}
    temp_dir = f"/tmp/rh{ports['port']}"
    proc = start_ray_node(temp_dir, ["--head", "--num-cpus=4", "--dashboard-host=127.0.0.1",
                                     "--include-dashboard=true"], ports,
                          tmp_path_factory.mktemp("head") / "head.log")
    api = f"http://127.0.0.1:{ports['dashboard-port']}"

    def job_agent_up() -> bool:  # the dashboard answers before the node's job agent accepts jobs
        probe = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--address", api, "--", "python", "-c",
                                "pass"], env=job_env(RAY_AUTH_MODE="token"), capture_output=True, text=True,
                               timeout=120)
        return probe.returncode == 0

    try:
        wait_for(job_agent_up, 180, interval=2, what="the Ray head's job agent")
        yield {"gcs": f"127.0.0.1:{ports['port']}", "api": api}
    finally:
        stop_ray_node(proc, temp_dir)


def test_plain_ray_job_submit_is_refused_without_the_token_mode(head, tmp_path):
    env = job_env()
    env.pop("RAY_AUTH_MODE", None)
    result = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--address", head["api"],
                             "--", "python", "-c", "print(1)"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "Missing authentication token" in result.stdout + result.stderr


def test_sft_under_ray_job_submit(head, tmp_path):
    env = job_env()
    env.pop("RAY_AUTH_MODE", None)  # jobs.submit must turn token mode on by itself
    result = subprocess.run([sys.executable, "-m", "jobs.submit", "--address", head["api"], "--",
                             "python", "-m", "jobs.sft", *sft_args(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "succeeded" in result.stdout + result.stderr
    assert (tmp_path / "tiny-cpu" / "sft" / "model" / "model.safetensors").is_file()


@pytest.mark.slow  # ~40 s; test_sft_under_ray_job_submit joins the same token-auth cluster by default
def test_sft_joins_a_running_cluster_with_address_flag(head, tmp_path):
    env = job_env()
    env.pop("RAY_AUTH_MODE", None)
    result = run_job("jobs.sft", "--address", head["gcs"], *sft_args(tmp_path), env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"Ray cluster at {head['gcs']}" in result.stdout + result.stderr
    assert (tmp_path / "tiny-cpu" / "sft" / "final_metrics.json").is_file()


def test_unreachable_address_fails_fast_and_names_it(tmp_path):
    port = free_port()  # nothing listens here
    started = time.monotonic()
    result = run_job("jobs.sft", "--address", f"127.0.0.1:{port}", "ray.connect_timeout_s=5",
                     f"run.output_root={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert time.monotonic() - started < 30
    assert f"Ray cluster at '127.0.0.1:{port}' is unreachable" in result.stderr


@pytest.mark.slow  # ~2 min; test_sft_under_ray_job_submit covers the ray job submit path by default
def test_ppo_under_ray_job_submit(head, tmp_path):
    env = job_env()
    env.pop("RAY_AUTH_MODE", None)
    args = ["--config", "configs/tiny-cpu.yaml", f"model.path={POLICY_PATH}", f"ppo.prompt_files=[{SFT_DATA}]",
            f"run.output_root={tmp_path}", "ppo.steps=2", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8",
            "ppo.ppo_epochs=1", "ppo.max_prompts=32", "ppo.rollout.max_new_tokens=16", "ppo.export=false",
            "ppo.reward.rm_source=keyword", f"ppo.reward.safety_lexicon_dir={SHARED / 'data' / 'lexicons'}",
            "ppo.cpus_per_actor=0.5"]
    result = subprocess.run([sys.executable, "-m", "jobs.submit", "--address", head["api"], "--",
                             "python", "-m", "jobs.ppo", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rows = [line for line in (tmp_path / "tiny-cpu" / "ppo" / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2
