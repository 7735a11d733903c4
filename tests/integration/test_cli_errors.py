"""Bad input at the command line: one clear line naming what and where, exit status 2, before any Ray."""

from __future__ import annotations

import json

import pytest

from common.config import Config
from common.configlib import describe
from jobs.sft import SECTIONS
from tests.helpers import run_job

pytestmark = [pytest.mark.integration]


def test_help_explains_every_flag_and_config_key():
    result = run_job("jobs.sft", "--help", timeout=120)
    assert result.returncode == 0
    for flag in ("--config", "--address", "--print-config", "section.key=value"):
        assert flag in result.stdout
    for key, _, help_text in describe(Config):
        if key.split(".")[0] in SECTIONS:
            assert key in result.stdout, key


def test_unknown_key_lists_close_matches():
    result = run_job("jobs.sft", "lora.rnak=8", timeout=120)
    assert result.returncode == 2
    assert "unknown config key 'lora.rnak'; did you mean lora.rank?" in result.stderr
    assert "Traceback" not in result.stderr


def test_out_of_range_value_names_field():
    result = run_job("jobs.sft", "lora.rank=-4", timeout=120)
    assert result.returncode == 2 and "lora.rank must be > 0, got -4" in result.stderr


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    data = tmp_path / "chats.jsonl"
    good = json.dumps({"prompt": "Say hi.", "response": "Hi there, friend."})
    data.write_text(f"{good}\n{good}\n{{\"prompt\": \"oops\"\n")
    result = run_job("jobs.sft", f"data.train_files=[{data}]", f"run.output_root={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert f"{data}:3: invalid JSON" in result.stderr and "Traceback" not in result.stderr


def test_empty_dataset_after_filtering_is_a_clear_error(tmp_path):
    data = tmp_path / "no_replies.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hello?"}]}) + "\n")
    result = run_job("jobs.sft", f"data.train_files=[{data}]", f"run.output_root={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert "no trainable SFT examples: 1 records read, 1 had no assistant tokens" in result.stderr


def test_missing_model_folder_is_named(tmp_path):
    result = run_job("jobs.sft", f"model.path={tmp_path / 'nope'}", timeout=120)
    assert result.returncode == 2 and f"model folder {tmp_path / 'nope'} does not exist" in result.stderr


def test_ppo_without_a_reward_model_is_one_line_before_ray_starts(tmp_path):
    result = run_job("jobs.ppo", "--config", "configs/tiny-cpu.yaml", f"run.output_root={tmp_path}", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "jobs.ppo: error: ppo.reward.rm_path must name a trained reward model folder when ppo.reward.rm_source=model "
        "(or score with rm_source=http, keyword or filler)")
    assert "Traceback" not in result.stderr and "Ray" not in result.stderr + result.stdout
    assert not (tmp_path / "tiny-cpu").exists()  # nothing written: the job stopped before its output folder


def test_qlora_on_cpu_is_refused_with_the_reason(tmp_path):
    import torch

    from actors.modeling import quantization_config
    from common.config import load_config
    from common.errors import QuantizationUnavailable

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA loading is checked in tests/gpu")
    with pytest.raises(QuantizationUnavailable, match="needs a CUDA GPU"):
        quantization_config(load_config(None, ["model.quantization=4bit", "lora.enabled=true"]).model)


def test_gpu_workers_on_a_cluster_without_gpus_are_refused_instead_of_waited_for(tmp_path):
    """Ray Train retries a worker group's start without limit, so this waited forever before the check."""
    result = run_job("jobs.sft", "sft.use_gpu=true", f"run.output_root={tmp_path}", timeout=150)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sft.use_gpu=true asks for a GPU per worker" in result.stderr
