"""`python -m jobs.serve_policy` as a user runs it: --help explains every flag, and bad input is one line and exit
status 2 before Ray (or vLLM) starts."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import POLICY_PATH
from tests.helpers import job_env, run_job

pytestmark = [pytest.mark.integration]


def test_help_explains_every_flag_and_the_serve_policy_keys():
    result = run_job("jobs.serve_policy", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--model DIR", "--model-id NAME", "--host HOST", "--port PORT", "--token-file FILE"):
        assert flag in result.stdout
    assert "serve_policy.auth_token_env" in result.stdout and "serve_policy.max_model_len" in result.stdout


def bad_inputs(tmp_path) -> list[tuple[list[str], str]]:
    no_config = tmp_path / "no_config"
    shutil.copytree(POLICY_PATH, no_config)
    (no_config / "config.json").unlink()
    return [
        ([], "no model to serve: pass --model DIR (or set serve_policy.model_path)"),
        (["--model", f"{tmp_path}/none"], f"model folder {tmp_path}/none does not exist (set serve_policy.model_path "
                                          f"(--model) to a local Hugging Face folder)"),
        (["--model", str(no_config)], f"model folder {no_config} has no config.json; is it a Hugging Face model "
                                      f"folder?"),
        (["--model", str(POLICY_PATH), "--port", "0"], "serve_policy.port"),
        (["--model", str(POLICY_PATH), "--host", "0.0.0.0"], "serve_policy.host=0.0.0.0 lets other machines reach the "
                                                             "policy service, and no token is set"),
        (["--model", str(POLICY_PATH), "--token-file", f"{tmp_path}/missing"],
         f"serve_policy.auth_token_file {tmp_path}/missing does not exist"),
    ]


def test_bad_input_is_one_line_and_status_2(tmp_path):
    env_without_token = job_env()
    env_without_token.pop("RAYALIGN_POLICY_TOKEN", None)  # a token in the environment would open the 0.0.0.0 case
    for args, line in bad_inputs(tmp_path):
        result = run_job("jobs.serve_policy", *args, timeout=120, env=env_without_token)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("jobs.serve_policy: error: ") and line in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
