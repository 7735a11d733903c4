"""The reward service's ways to start, as a user runs them: `python -m jobs.serve_rm` and
`serve run serve/serve_config.yaml` (each its own embedded Ray), `serve deploy serve/serve_config.yaml` to a
real `ray start --head` with token authentication (all slow tier), plus help and a bad model path."""

from __future__ import annotations

import re
import subprocess

import pytest
import requests
import yaml

from actors.reward import RewardModel
from common.config import load_config
from tests.conftest import TINY_CPU
from tests.helpers import (HEAD_PORTS, REPO, VENV_BIN, free_port, job_env, kill_tree, run_job, start_job,
                           start_ray_node, stop_ray_node, wait_for)
from tests.reward_helpers import make_reward_dir

pytestmark = [pytest.mark.integration]
BODY = {"prompts": ["Name a colour."], "responses": ["Blue."]}


def test_help_lists_the_serve_keys():
    result = run_job("jobs.serve_rm", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "serve.port" in result.stdout and "serve.max_batch_size" in result.stdout


def test_a_missing_model_folder_is_one_clear_line(tmp_path):
    result = run_job("jobs.serve_rm", "--config", "configs/tiny-cpu.yaml", f"serve.model_path={tmp_path}/none",
                     timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"jobs.serve_rm: error: model folder {tmp_path}/none does not exist " \
                                    f"(set serve.model_path to a local Hugging Face folder)"


def serves(url: str) -> bool:
    try:
        return requests.post(f"{url}/score", json=BODY, timeout=10).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.mark.slow
def test_jobs_serve_rm_prints_the_url_and_serves(tmp_path):
    model_dir = make_reward_dir(tmp_path / "model")
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start_job("jobs.serve_rm", "--config", "configs/tiny-cpu.yaml", f"serve.model_path={model_dir}",
                     f"serve.port={port}", log_path=log)
    try:
        wait_for(lambda: "is served at" in log.read_text(), 240, what="the serving URL line")
        url = re.search(r"is served at (http://\S+) ", log.read_text()).group(1)
        assert url == f"http://127.0.0.1:{port}"
        wait_for(lambda: serves(url), 60, what="the first score")
    finally:
        kill_tree(proc)


def shipped_serve_config(tmp_path, model_dir: str, port: int, **args):
    """A copy of serve/serve_config.yaml that serves model_dir on a free port (`args`: more app arguments)."""
    shipped = yaml.safe_load((REPO / "serve" / "serve_config.yaml").read_text())
    shipped["http_options"]["port"] = port
    shipped["applications"][0]["args"]["serve.model_path"] = model_dir
    shipped["applications"][0]["args"].update(args)
    config_file = tmp_path / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(shipped))
    return config_file


@pytest.mark.slow
def test_serve_run_with_the_shipped_config_file(tmp_path):
    model_dir = make_reward_dir(tmp_path / "model")
    port = free_port()
    config_file = shipped_serve_config(tmp_path, model_dir, port)
    # `python -m ray.serve.scripts` is what the `serve` console script runs; `--address local` starts a fresh
    # cluster instead of joining whatever `ray start` left on this machine.
    proc = start_job("ray.serve.scripts", "run", "--address", "local", str(config_file),
                     log_path=tmp_path / "serve.log")
    try:
        wait_for(lambda: serves(f"http://127.0.0.1:{port}"), 240, what="`serve run` to answer /score")
    finally:
        kill_tree(proc)


def token_env(token_mode: bool = True) -> dict:
    env = job_env(RAY_AUTH_MODE="token")
    if not token_mode:
        env.pop("RAY_AUTH_MODE")
    return env


def serve_deploy(config_file, api: str, token_mode: bool) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "serve"), "deploy", "--address", api, str(config_file)], cwd=REPO,
                          env=token_env(token_mode), capture_output=True, text=True, timeout=120)


def answers(url: str) -> int | None:
    """The HTTP status a GET gets, None while nothing listens."""
    try:
        return requests.get(url, timeout=10).status_code
    except requests.ConnectionError:
        return None


@pytest.mark.slow
def test_serve_deploy_to_a_running_head_with_token_auth(tmp_path):
    """`serve deploy` talks to the head's dashboard (its HTTP address, not the GCS address), and with Ray's
    token authentication on it needs RAY_AUTH_MODE=token on the client side, like `ray job submit`."""
    model_dir = make_reward_dir(tmp_path / "model")
    port = free_port()
    config_file = shipped_serve_config(tmp_path, model_dir, port)
    head_ports = {name: free_port() for name in HEAD_PORTS}
    head_dir, api = f"/tmp/rsd{head_ports['port']}", f"http://127.0.0.1:{head_ports['dashboard-port']}"
    head = start_ray_node(head_dir, ["--head", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                                     "--include-dashboard=true"], head_ports, tmp_path / "head.log")
    try:
        wait_for(lambda: answers(f"{api}/api/ray/version") is not None, 180, interval=2, what="the head's dashboard")
        refused = serve_deploy(config_file, api, token_mode=False)
        assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr

        deployed = serve_deploy(config_file, api, token_mode=True)
        assert deployed.returncode == 0, (deployed.stdout + deployed.stderr)[-3000:]
        url = f"http://127.0.0.1:{port}"
        # Serve's proxy answers 404 until the application's replica is up and its route registered.
        try:
            wait_for(lambda: answers(f"{url}/healthz") == 200, 240, interval=1, what="/healthz to answer 200")
        except TimeoutError:
            status = subprocess.run([str(VENV_BIN / "serve"), "status", "--address", api], env=token_env(),
                                    capture_output=True, text=True, timeout=120)
            pytest.fail(f"the deployed app never became healthy; serve status:\n{status.stdout}{status.stderr}")
        body = {"prompts": ["Name a colour.", "Say hi."], "responses": ["Blue.", "Go away, idiot."]}
        response = requests.post(f"{url}/score", json=body, timeout=60)
        assert response.status_code == 200, response.text
        local = RewardModel(model_dir, max_length=load_config(TINY_CPU).reward_model.max_length)
        expected = local.score([[{"role": "user", "content": p}] for p in body["prompts"]], body["responses"])
        assert response.json()["scores"] == pytest.approx(expected, abs=1e-5)
    finally:
        stop_ray_node(head, head_dir)
