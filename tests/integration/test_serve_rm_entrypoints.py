"""The reward service's two ways to start, as a user runs them: `python -m jobs.serve_rm` and
`serve run serve/serve_config.yaml` (each its own embedded Ray; slow tier), plus help and a bad model path."""

from __future__ import annotations

import re

import pytest
import requests
import yaml

from tests.helpers import REPO, free_port, kill_tree, run_job, start_job, wait_for
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
                                    f"(set model.path to a local Hugging Face folder)"


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


@pytest.mark.slow
def test_serve_run_with_the_shipped_config_file(tmp_path):
    model_dir = make_reward_dir(tmp_path / "model")
    port = free_port()
    shipped = yaml.safe_load((REPO / "serve" / "serve_config.yaml").read_text())
    shipped["http_options"]["port"] = port
    shipped["applications"][0]["args"]["serve.model_path"] = model_dir
    config_file = tmp_path / "serve_config.yaml"
    config_file.write_text(yaml.safe_dump(shipped))
    # `python -m ray.serve.scripts` is what the `serve` console script runs; `--address local` starts a fresh
    # cluster instead of joining whatever `ray start` left on this machine.
    proc = start_job("ray.serve.scripts", "run", "--address", "local", str(config_file),
                     log_path=tmp_path / "serve.log")
    try:
        wait_for(lambda: serves(f"http://127.0.0.1:{port}"), 240, what="`serve run` to answer /score")
    finally:
        kill_tree(proc)
