"""jobs.pipeline's wiring and fingerprints, stage by stage (the integration test runs the PPO route end to end)."""

from __future__ import annotations

import pytest

from common.config import load_config
from common.errors import ConfigError, ModelDirError
from jobs.pipeline import check_stages, fingerprint, stages_for_task, wire
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
    # The same paths fed by a stage that ran otherwise (a re-curated dataset), or another seed: not the same run.
    assert fingerprint(cfg, "sft", OUTPUTS, {"curate": "aaaa"}) != fingerprint(cfg, "sft", OUTPUTS, {"curate": "bbbb"})
    assert fingerprint(load_config(TINY_CPU, ["run.seed=7"]), "sft", OUTPUTS) != base


@pytest.mark.parametrize("stage", ["ppo", "dpo"])
def test_an_adapter_disabled_reference_needs_lora_whatever_job_loads_the_config(stage):
    with pytest.raises(ConfigError, match=f"{stage}.reference=adapter_disabled needs lora.enabled=true"):
        load_config(TINY_CPU, [f"{stage}.reference=adapter_disabled"])
    load_config(TINY_CPU, [f"{stage}.reference=adapter_disabled", "lora.enabled=true"])


def test_ppo_needs_a_reward_model_folder_unless_an_earlier_stage_trains_one(tmp_path):
    cfg = load_config(TINY_CPU)  # rm_source=model, no rm_path
    with pytest.raises(ConfigError, match="ppo.reward.rm_path must name a trained reward model folder"):
        cfg.check_stage("ppo")
    cfg.check_stage("ppo", wired={"reward_model"})
    load_config(TINY_CPU, ["ppo.reward.rm_source=keyword"]).check_stage("ppo")
    load_config(TINY_CPU, ["ppo.reward.enabled_terms=[kl, length]"]).check_stage("ppo")  # no preference term
    missing = load_config(TINY_CPU, [f"ppo.reward.rm_path={tmp_path / 'rm'}"])
    with pytest.raises(ModelDirError, match=r"model folder .*/rm does not exist \(set ppo.reward.rm_path to"):
        missing.check_stage("ppo")


def test_a_missing_start_model_names_its_key_unless_the_sft_stage_makes_it(tmp_path):
    cfg = load_config(TINY_CPU, [f"model.path={tmp_path / 'base'}", "ppo.reward.rm_source=keyword"])
    for stage in ("sft", "reward_model", "dpo", "ppo"):
        with pytest.raises(ModelDirError, match=r"/base does not exist \(set model.path to"):
            cfg.check_stage(stage)
    cfg.check_stage("dpo", wired={"sft_model"})
    cfg.check_stage("ppo", wired={"sft_model"})
    started = load_config(TINY_CPU, [f"ppo.init_model={tmp_path / 'sft'}", "ppo.reward.rm_source=keyword"])
    with pytest.raises(ModelDirError, match=r"/sft does not exist \(set ppo.init_model to"):
        started.check_stage("ppo")
    assert started.ppo_start_model == str(tmp_path / "sft")
    assert load_config(TINY_CPU).ppo_start_model == load_config(TINY_CPU).model.path


def test_the_pipeline_checks_every_stage_before_it_starts():
    cfg = load_config(TINY_CPU)
    check_stages(cfg, cfg.pipeline.stages)  # the reward model PPO needs is trained by the stage before it
    short = load_config(TINY_CPU, ["pipeline.stages=[curate, sft, ppo]"])
    with pytest.raises(ConfigError, match="ppo.reward.rm_path"):
        check_stages(short, short.pipeline.stages)


def test_a_stage_whose_model_a_later_stage_starts_from_must_export_it():
    """Without it the later stage got the path "None" after the earlier one had trained (hours in)."""
    with pytest.raises(ConfigError, match=r"sft.export=false, but the reward_model, ppo stage\(s\) after it start "
                                          r"from the model it exports"):
        check_stages(load_config(TINY_CPU, ["sft.export=false"]), ["curate", "sft", "reward_model", "ppo"])
    with pytest.raises(ConfigError, match=r"reward_model.export=false, but the ppo stage"):
        check_stages(load_config(TINY_CPU, ["reward_model.export=false"]), ["curate", "sft", "reward_model", "ppo"])
    check_stages(load_config(TINY_CPU, ["sft.export=false"]), ["curate", "sft"])  # nothing after it needs it


def test_a_formatted_output_task_skips_rlhf_and_says_why_unless_forced():
    assert stages_for_task(load_config(TINY_CPU)) == (["curate", "sft", "reward_model", "ppo"], None)  # assistant
    stages, why = stages_for_task(load_config(TINY_CPU, ["pipeline.task_type=code"]))
    assert stages == ["curate", "sft"]
    assert why.startswith("skipping reward_model, ppo: code is a formatted-output task") and "force_rlhf" in why
    stages, why = stages_for_task(load_config(TINY_CPU, ["profile.task_type=extraction", "pipeline.force_rlhf=true"]))
    assert stages == ["curate", "sft", "reward_model", "ppo"]
    assert why == ("pipeline.force_rlhf=true: running reward_model, ppo for a extraction task, which SPEC §4 would "
                   "train with SFT only")
    # The skipped stages are not checked either: a code task needs no reward model for PPO.
    skipped = load_config(TINY_CPU, ["pipeline.task_type=code", "pipeline.stages=[curate, sft, ppo]"])
    check_stages(skipped, stages_for_task(skipped)[0])


def test_a_synthesize_stage_hands_its_candidates_to_curation():
    cfg = load_config(TINY_CPU, ["pipeline.stages=[synthesize,curate,sft]", "synth.category=domain"])
    curate = wire(cfg, "curate", {"candidates": "/runs/x/synthesize/candidates.jsonl"}).curate
    assert curate.sources == [*cfg.curate.sources, {"path": "/runs/x/synthesize/candidates.jsonl",
                                                    "category": "domain"}]
    assert wire(cfg, "curate", {}).curate.sources == cfg.curate.sources


@pytest.mark.parametrize("overrides, message", [
    (["pipeline.stages=[curate,synthesize]"], "synthesize must come first, followed by curate"),
    (["pipeline.stages=[synthesize,sft]"], "synthesize must come first, followed by curate"),
])
def test_synthesize_starts_the_pipeline_before_curation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_CPU, overrides)


def test_the_synthesis_stage_is_checked_before_ray_starts(tmp_path):
    cfg = load_config(TINY_CPU, ["pipeline.stages=[synthesize,curate]", f"synth.model={tmp_path}/none"])
    with pytest.raises(ModelDirError, match="synth.model"):
        check_stages(cfg, ["synthesize", "curate"])
    with pytest.raises(ConfigError, match="synth.category 'poetry' is not a category of curate.mix"):
        check_stages(load_config(TINY_CPU, ["synth.category=poetry"]), ["synthesize"])


def test_ppo_from_a_quantized_model_is_refused_before_ray_starts():
    """The engines would be sent bitsandbytes' int8 codes or packed 4-bit bytes as the policy's weights."""
    for quantization in ("int8", "4bit"):
        cfg = load_config(TINY_CPU, [f"model.quantization={quantization}", "lora.enabled=true",
                                     "ppo.reward.rm_source=keyword"])
        with pytest.raises(ConfigError, match=rf"ppo with model.quantization={quantization}: the rollout engines "
                                              r"cannot take quantized weights"):
            cfg.check_stage("ppo")
    load_config(TINY_CPU, ["ppo.reward.rm_source=keyword"]).check_stage("ppo")
