"""The reward-model job end to end with real Ray Train + DeepSpeed over gloo (2 ranks): Bradley–Terry on
the tiny policy backbone (default tier), resume, export; resume after a kill, MiniLM on HH-RLHF harmless and
LoRA + ZeRO-3 (slow tier)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from actors.reward import TRAINED_MAX_LENGTH_KEY, RewardModel, warn_if_trained_at_another_length
from common.config import load_config
from common.metrics import read_jsonl
from jobs.train_rm import prepare, run
from tests.conftest import TINY_CPU
from tests.helpers import kill_once_checkpointed, ray_train_registered, run_job

pytestmark = [pytest.mark.integration, pytest.mark.ray]
REPO_CONFIGS = TINY_CPU.parent
TINY_STEPS = ["reward_model.max_steps=30", "reward_model.eval_every=10", "reward_model.save_every=10"]


def tiny_config(root, *overrides):
    return load_config(TINY_CPU, [f"run.output_root={root}", *TINY_STEPS, *overrides])


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("rm-tiny")


@pytest.fixture(scope="module")
def tiny(ray_session, tiny_root):
    return run(tiny_config(tiny_root))


def heldout_accuracy_of_export(cfg, model_dir) -> float:
    """Score the job's own held-out pairs with the exported folder, outside Ray and DeepSpeed."""
    split = prepare(cfg).split
    model = RewardModel(str(model_dir), max_length=cfg.reward_model.max_length)
    chosen = torch.tensor(model.score_encoded([pair.chosen for pair in split.eval]))
    rejected = torch.tensor(model.score_encoded([pair.rejected for pair in split.eval]))
    return float((chosen > rejected).double().mean())


def test_heldout_accuracy_beats_chance_by_a_wide_margin(tiny):
    heldout, before = tiny.report["heldout"], tiny.report["before_training"]
    # The rejected answers of llms-from-scratch are rude rewrites of the chosen ones. Measured: 0.50 before
    # training, 0.85 after 30-40 steps (n=108). 0.70 and a CI above 0.5 leave room for seed noise, yet a
    # broken loss or a head that never trains stays at ~0.5 and fails.
    assert heldout["accuracy"] >= 0.70, tiny.report
    assert heldout["ci95"][0] > 0.5 and heldout["ci_excludes_chance"]
    assert heldout["mean_margin"] > 0.2
    assert heldout["accuracy"] > before["accuracy"] + 0.15 and abs(before["mean_margin"]) < 0.1
    assert tiny.report["size_check"]["ratio"] == 1.0 and tiny.report["size_check"]["warning"] is None


def test_report_metrics_and_plot_are_written(tiny):
    on_disk = json.loads((tiny.output_dir / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(tiny.report))
    rows = read_jsonl(tiny.output_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 10, 20, 30]
    assert {"eval_accuracy_ci_low", "eval_accuracy_ci_high", "eval_margin", "pairs_per_s"} <= set(rows[-1])
    assert (tiny.output_dir / "accuracy.png").stat().st_size > 10_000
    assert (tiny.output_dir / "metrics.csv").is_file()


def test_export_is_a_hugging_face_reward_model_that_reproduces_the_accuracy(tiny, tiny_root):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert tiny.model_dir == tiny.output_dir / "model"
    model = AutoModelForSequenceClassification.from_pretrained(tiny.model_dir)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    assert AutoTokenizer.from_pretrained(tiny.model_dir).chat_template
    accuracy = heldout_accuracy_of_export(tiny_config(tiny_root), tiny.model_dir)
    # Same inputs, same weights; only a near-tie could flip under a different batch padding.
    assert accuracy == pytest.approx(tiny.report["heldout"]["accuracy"], abs=1.5 / tiny.report["heldout"]["pairs"])


def test_export_carries_its_training_length_and_scoring_at_another_is_named(tiny, tiny_root):
    trained = tiny_config(tiny_root).reward_model.max_length
    assert getattr(AutoConfig.from_pretrained(tiny.model_dir), TRAINED_MAX_LENGTH_KEY) == trained
    assert warn_if_trained_at_another_length(tiny.model_dir, trained) is None
    message = warn_if_trained_at_another_length(tiny.model_dir, trained // 2)
    assert f"trained on inputs cut to {trained} tokens and now scores them cut to {trained // 2}" in message
    assert f"set reward_model.max_length={trained}" in message


@pytest.mark.slow  # ~35 s; SFT's SIGTERM test and DPO's re-run test cover the shared Ray Train resume by default
def test_rerun_resumes_from_the_latest_checkpoint(tiny, tiny_root):
    # Step 30 was the last step (not checkpointed), so a longer re-run continues from the step-20 checkpoint.
    resumed = run(tiny_config(tiny_root, "reward_model.max_steps=36"))
    rows = read_jsonl(resumed.output_dir / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 37))  # steps 21-30 logged once, not twice
    assert rows[-1]["pairs_seen"] == 36 * 16  # 8 pairs x 2 ranks per step, counted across the resume
    assert resumed.report["steps"] == 36 and resumed.report["heldout"]["accuracy"] >= 0.70


@pytest.mark.slow
def test_resume_after_kill_finishes_with_the_uninterrupted_runs_accuracy(tiny, tmp_path):
    """SIGKILL of the whole job tree (driver, embedded Ray, both ranks) after the step-10 checkpoint; the same
    command again resumes and ends where the uninterrupted `tiny` run (same config) ended."""
    args = ["--config", str(TINY_CPU), f"run.output_root={tmp_path}", *TINY_STEPS]
    out = tmp_path / "tiny-cpu" / "reward_model"
    kill_once_checkpointed("jobs.train_rm", args, ray_train_registered(out / "ray_train", 10), tmp_path / "first.log")
    steps_before = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert 10 <= max(steps_before) < 30 and not (out / "report.json").exists()
    second = run_job("jobs.train_rm", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed reward model from step" in second.stdout + second.stderr
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))  # no step lost, none twice
    assert rows[-1]["pairs_seen"] == 30 * 16
    resumed, uninterrupted = json.loads((out / "report.json").read_text())["heldout"], tiny.report["heldout"]
    # Checkpoints hold optimizer, scheduler and data position: the same held-out verdicts on every pair, and
    # the held-out loss (finer than accuracy's 1/108 steps) to float noise.
    assert resumed["accuracy"] == uninterrupted["accuracy"]
    assert resumed["loss"] == pytest.approx(uninterrupted["loss"], abs=1e-6)
    assert resumed["mean_margin"] == pytest.approx(uninterrupted["mean_margin"], abs=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["--config", "configs/rm-minilm-hh.yaml", "reward_model.refuse_oversize=true"],
     "51.1x the policy's 444,352 (limit 1.5x)"),
    (["reward_model.backbone=/no/such/model"], "reward_model.backbone /no/such/model does not exist"),
    (["reward_model.lora=true", "reward_model.backbone=minilm", "lora.target_modules=[q_proj,v_proj]"],
     "lora.target_modules ['q_proj', 'v_proj'] are not modules of"),
])
def test_user_errors_are_one_line_before_any_training(overrides, message, tmp_path):
    result = run_job("jobs.train_rm", *overrides, f"run.output_root={tmp_path}", timeout=180)
    assert result.returncode == 2
    assert result.stderr.startswith("jobs.train_rm: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_lora_with_zero3_trains_and_exports_merged(ray_session, tmp_path):
    cfg = tiny_config(tmp_path, "reward_model.lora=true", "lora.rank=8", "lora.alpha=16", "deepspeed.stage=3",
                      "reward_model.lr=3e-3", "reward_model.max_steps=40", "reward_model.save_every=100")
    result = run(cfg)
    assert result.report["lora"] and result.report["heldout"]["ci95"][0] > 0.5, result.report
    state_names = RewardModel(str(result.model_dir)).model.state_dict().keys()
    assert not any("lora" in name for name in state_names)  # adapters merged into plain weights
    assert heldout_accuracy_of_export(cfg, result.model_dir) == pytest.approx(
        result.report["heldout"]["accuracy"], abs=1.5 / result.report["heldout"]["pairs"])


@pytest.mark.slow
def test_minilm_on_hh_rlhf_harmless_is_better_than_chance(ray_session, tmp_path):
    """The issue's acceptance check: on real harmlessness preferences the 95% interval excludes 50%."""
    # 40% held out (718 of the 1,795 pairs) narrows the 95% interval to about ±3.6 points; 30 steps train on 480
    # pairs, where held-out accuracy has already levelled off near 0.6 in our measurements.
    cfg = load_config(REPO_CONFIGS / "rm-minilm-hh.yaml",
                      [f"run.output_root={tmp_path}", "reward_model.max_steps=30", "reward_model.eval_fraction=0.4",
                       "reward_model.eval_every=30", "reward_model.save_every=100"])
    result = run(cfg)
    heldout = result.report["heldout"]
    assert result.report["input_format"] == "pair" and heldout["pairs"] == 718
    assert heldout["ci95"][0] > 0.5, result.report
    assert result.report["size_check"]["warning"]  # MiniLM is ~50x the tiny policy: warned, not refused
