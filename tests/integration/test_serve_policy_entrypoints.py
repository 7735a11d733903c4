"""`python -m jobs.serve_policy` as a user runs it: --help explains every flag, bad input is one line and exit
status 2 before Ray (or vLLM) starts, and (slow tier) the job serves an OpenAI client on a cluster of this machine's
2 CPUs."""

from __future__ import annotations

import re
import shutil

import openai
import pytest

from tests.conftest import POLICY_PATH
from tests.helpers import free_port, job_env, kill_tree, run_job, start_job, wait_for

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


@pytest.mark.slow
def test_the_job_prints_its_url_and_answers_an_openai_client(tmp_path):
    """On the embedded cluster's own CPU count (2 here), where the engine and its router must fit together."""
    token_file = tmp_path / "token"
    token_file.write_text("job-token")
    log = tmp_path / "serve.log"
    proc = start_job("jobs.serve_policy", "--model", str(POLICY_PATH), "--model-id", "stories", "--port",
                     str(free_port()), "--token-file", str(token_file), log_path=log)
    try:
        wait_for(lambda: "is served as model" in log.read_text(), 300, what="the serving URL line")
        url = re.search(r"is served as model 'stories' at (http://\S+) ", log.read_text()).group(1)
        client = openai.OpenAI(base_url=url, api_key="job-token", max_retries=0, timeout=60)
        assert [model.id for model in client.models.list().data] == ["stories"]
        reply = client.chat.completions.create(model="stories", messages=[{"role": "user", "content": "Hi."}],
                                               max_tokens=8, seed=1)
        assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8
    finally:
        kill_tree(proc)
