"""Every model family through the whole jobs on a real local Ray cluster (issue 19, part 2): jobs.sft with LoRA on
Ray Train + DeepSpeed (the family's default targets, merged export), then jobs.ppo from that export with its vLLM
engine (or the named Hugging Face fallback where vLLM lacks the architecture), a few steps each. Slow: seven
families × two jobs; the default tier checks each stage per family without a cluster (tests/unit/test_families.py)
and the whole jobs on the Llama policy."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from common.config import load_config
from common.metrics import read_jsonl
from jobs.tiny_models import FAMILIES, build
from tests.conftest import SHARED, TINY_CPU

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]
SFT_DATA = SHARED / "data" / "sft" / "llms-from-scratch" / "instruction-data.json"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sft_with_lora_then_ppo_on_every_family(ray_session, tmp_path, family):
    from jobs.ppo import run as ppo
    from jobs.sft import run as sft

    folder = build(family, tmp_path / "base" / family)
    common = [f"run.output_root={tmp_path}", f"model.path={folder}"]
    trained = sft(load_config(TINY_CPU, [*common, "lora.enabled=true", "lora.rank=4", f"data.train_files=[{SFT_DATA}]",
                                         "data.max_records=64", "sft.max_steps=3", "sft.eval_every=3",
                                         "sft.save_every=3", "sft.num_workers=1"]))
    merged = AutoModelForCausalLM.from_pretrained(trained.model_dir)  # the merged export loads as a plain model
    assert merged.config.model_type == AutoModelForCausalLM.from_pretrained(folder).config.model_type
    losses = [row["loss"] for row in read_jsonl(tmp_path / "tiny-cpu" / "sft" / "metrics.jsonl") if "loss" in row]
    assert losses and all(loss == loss for loss in losses)  # finite, logged per step

    result = ppo(load_config(TINY_CPU, [*common, f"ppo.init_model={trained.model_dir}", "ppo.steps=2",
                                        "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
                                        "ppo.max_prompts=32", "ppo.rollout.max_new_tokens=8",
                                        "ppo.reward.rm_source=keyword", "ppo.export=false",
                                        "ppo.cpus_per_actor=0.5", "lora.enabled=false"]))
    assert result.steps == 2
    roles = json.loads((tmp_path / "tiny-cpu" / "ppo" / "roles.json").read_text())
    assert roles["rollout_engine"] == "vllm"  # vLLM's CPU build knows all seven architectures
    assert roles["rollout_weights"] == "plain"  # the tiny fp32 models' syncs copy in place (ppo.rollout.cpu_weights)
