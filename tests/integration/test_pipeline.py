"""jobs.pipeline end to end on the tiny CPU config, shrunk to seconds per stage: curate → SFT → reward model
→ PPO (with the trained reward model as a Ray actor) → report; each stage is fed by the one before, a re-run
skips finished stages, and a changed PPO setting re-runs PPO alone, resuming from its checkpoint."""

from __future__ import annotations

import json

import pytest

from common.config import load_config
from common.metrics import read_jsonl
from tests.conftest import TINY_CPU

pytestmark = [pytest.mark.integration, pytest.mark.ray]

SOURCES = ("curate.sources=["
           "{path: ../shared/data/sft/llms-from-scratch/instruction-data.json, category: general, limit: 100},"
           "{path: ../shared/data/sft/llamafactory-identity/identity.json, category: domain, limit: 45},"
           "{path: ../shared/data/multiturn/fastchat/dummy_conversation.json, category: multi_turn, limit: 40},"
           "{path: ../shared/data/sft/self-instruct/user_oriented_instructions.jsonl, category: edge, limit: 20}]")
SMALL = [SOURCES, "sft.micro_batch_size=4", "sft.max_steps=4", "sft.eval_every=2", "sft.save_every=2", "reward_model.max_steps=4",
         "reward_model.eval_every=2", "reward_model.save_every=2", "ppo.steps=2", "ppo.save_every=1",
         "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1", "ppo.rollout.max_new_tokens=12",
         "pipeline.sample_prompts=[Tell me a story about a dog.]", "pipeline.sample_max_new_tokens=8"]


def pipeline(root, *overrides):
    from jobs.pipeline import run

    cfg = load_config(TINY_CPU, [f"run.output_root={root}", "run.name=pipe", *SMALL, *overrides])
    return cfg.run.run_dir(), run(cfg)


def stage_records(run_dir) -> dict:
    return {stage: json.loads((run_dir / stage / "stage.json").read_text())
            for stage in ("curate", "sft", "reward_model", "ppo")}


@pytest.fixture(scope="module")
def first_run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    run_dir, outputs = pipeline(root)
    return root, run_dir, outputs, stage_records(run_dir)


def test_each_stage_feeds_the_next_and_the_report_covers_them(first_run):
    from transformers import AutoModelForCausalLM

    _, run_dir, outputs, records = first_run
    curated = [json.loads(line) for line in open(outputs["curated"])]
    assert curated and all("messages" in r or "prompt" in r for r in curated)
    # SFT trained on the curated file, PPO started from the SFT model and scored with the trained reward model.
    sft_config, ppo_config = records["sft"]["config"], records["ppo"]["config"]
    assert sft_config["data"]["train_files"] == [outputs["curated"]]
    assert ppo_config["ppo"]["init_model"] == outputs["sft_model"]
    assert ppo_config["ppo"]["reward"]["rm_path"] == outputs["reward_model"]
    rows = read_jsonl(run_dir / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["reward/rm_std"] > 0 for r in rows)  # a real model's scores differ between responses
    policy = AutoModelForCausalLM.from_pretrained(outputs["policy"])  # the exported PPO policy loads
    assert policy.num_parameters() > 0
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["seconds"]) == {"curate", "sft", "reward_model", "ppo"}
    assert len(report["samples"]["final"]) == 1 and (run_dir / "report.md").stat().st_size > 0
    assert all(records[stage]["fingerprint"] for stage in records)


def test_rerun_skips_every_finished_stage(first_run):
    root, run_dir, outputs, records = first_run
    again_dir, again = pipeline(root)
    assert again_dir == run_dir and again["policy"] == outputs["policy"]
    assert stage_records(run_dir) == records  # nothing re-ran: every stage.json is as the first run left it


@pytest.mark.slow  # ~1 min; the default run checks that a re-run skips finished stages
def test_a_changed_ppo_setting_reruns_ppo_alone_from_its_checkpoint(first_run):
    root, run_dir, outputs, records = first_run
    _, again = pipeline(root, "ppo.steps=3")
    now = stage_records(run_dir)
    for stage in ("curate", "sft", "reward_model"):
        assert now[stage] == records[stage]
    assert now["ppo"]["fingerprint"] != records["ppo"]["fingerprint"]
    rows = read_jsonl(run_dir / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # steps 1-2 came from the checkpoint, not re-trained
