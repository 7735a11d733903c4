"""jobs.pipeline's wiring and fingerprints, stage by stage (the integration test runs the PPO route end to end)."""

from __future__ import annotations

from jobs.config import load_config
from jobs.pipeline import fingerprint, wire
from tests.conftest import TINY_CPU

OUTPUTS = {"curated": "/runs/x/curate/curated.jsonl", "sft_model": "/runs/x/sft/model",
           "reward_model": "/runs/x/reward_model/model"}


def test_each_stage_gets_what_the_earlier_ones_produced():
    cfg = load_config(TINY_CPU)
    assert wire(cfg, "sft", OUTPUTS).data.train_files == [OUTPUTS["curated"]]
    assert wire(cfg, "reward_model", OUTPUTS).reward_model.backbone == OUTPUTS["sft_model"]
    ppo = wire(cfg, "ppo", OUTPUTS).ppo
    assert (ppo.init_model, ppo.reward.rm_path) == (OUTPUTS["sft_model"], OUTPUTS["reward_model"])
    # The DPO route: the SFT model becomes both the policy to train and (frozen) its reference.
    assert wire(cfg, "dpo", OUTPUTS).model.path == OUTPUTS["sft_model"]


def test_a_chosen_reward_backbone_and_a_non_model_reward_are_left_alone():
    cfg = load_config(TINY_CPU, ["reward_model.backbone=/my/encoder", "ppo.reward.rm_source=keyword"])
    assert wire(cfg, "reward_model", OUTPUTS).reward_model.backbone == "/my/encoder"
    assert wire(cfg, "ppo", OUTPUTS).ppo.reward.rm_path is None


def test_fingerprints_change_with_the_stage_inputs_and_its_own_sections_only():
    cfg = load_config(TINY_CPU)
    base = fingerprint(cfg, "sft", OUTPUTS)
    assert fingerprint(load_config(TINY_CPU, ["ppo.steps=3"]), "sft", OUTPUTS) == base  # another stage's key
    assert fingerprint(load_config(TINY_CPU, ["sft.max_steps=7"]), "sft", OUTPUTS) != base
    assert fingerprint(cfg, "sft", {**OUTPUTS, "curated": "/elsewhere.jsonl"}) != base


def test_ppo_adapter_disabled_reference_needs_lora():
    import pytest

    from jobs.configlib import ConfigError
    from jobs.ppo import check_reference

    with pytest.raises(ConfigError, match="ppo.reference=adapter_disabled needs lora.enabled=true"):
        check_reference(load_config(TINY_CPU, ["ppo.reference=adapter_disabled"]))
    check_reference(load_config(TINY_CPU, ["ppo.reference=adapter_disabled", "lora.enabled=true"]))
