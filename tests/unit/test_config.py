"""Typed config: every committed YAML loads, overrides apply, bad values name the field and the range."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from common.config import SFT_LR_BOUNDS, Config, load_config, resolve_path, sft_learning_rate
from common.configlib import describe
from common.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
COMMITTED_YAML = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_committed_recipes():
    assert any(p.name == "tiny-cpu.yaml" for p in COMMITTED_YAML)


@pytest.mark.parametrize("path", COMMITTED_YAML, ids=lambda p: p.name)
def test_every_committed_yaml_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_spec_defaults_live_in_the_schema():
    cfg = Config()
    assert (cfg.lora.rank, cfg.lora.alpha) == (64, 16)
    assert cfg.lora.target_modules is None  # by family (common/families.py); the SPEC's q/k/v/o for Llama
    from common.families import lora_targets
    assert lora_targets(None, "llama") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (cfg.ppo.lr, cfg.ppo.clip_range, cfg.ppo.value_clip_range) == (1e-6, 0.2, 0.2)
    assert (cfg.ppo.max_grad_norm, cfg.ppo.mini_batch_size, cfg.ppo.ppo_epochs) == (0.5, 16, 4)
    assert (cfg.ppo.rollout.temperature, cfg.ppo.rollout.top_p, cfg.ppo.rollout.repetition_penalty) == (0.7, 0.9, 1.2)
    assert cfg.ppo.kl.coef == 0.05 and cfg.ppo.kl.schedule == [[0.2, 0.08], [0.8, 0.05], [1.0, 0.06]]
    assert cfg.curate.mix == {"general": 0.4, "domain": 0.3, "multi_turn": 0.2, "edge": 0.1}
    assert (cfg.curate.min_rating, cfg.curate.min_chars, cfg.curate.max_chars) == (4.0, 10, 2000)
    assert (cfg.curate.min_annotators, cfg.curate.max_rating_spread) == (3, 2.0)
    assert (cfg.curate.min_unique_token_ratio, cfg.curate.max_similarity, cfg.curate.spot_check_fraction) == \
        (0.70, 0.85, 0.30)


def test_dotted_overrides_parse_yaml_values(tmp_path):
    cfg = load_config(None, ["lora.rank=8", "lora.enabled=true", "sft.lr=3e-4", "ray.address=null",
                             "lora.target_modules=[q_proj,v_proj]", "ppo.kl.coef=0.1"])
    assert cfg.lora.rank == 8 and cfg.lora.enabled is True and cfg.sft.lr == 3e-4
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.ppo.kl.coef == 0.1


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("lora:\n  rank: 4\nsft:\n  epochs: 3\n")
    cfg = load_config(path, ["sft.epochs=5"])
    assert cfg.lora.rank == 4 and cfg.sft.epochs == 5


@pytest.mark.parametrize("override, message", [
    ("lora.rank=-4", "lora.rank must be > 0, got -4"),
    ("lora.dropout=1.0", "lora.dropout must be < 1.0, got 1.0"),
    ("deepspeed.stage=4", "deepspeed.stage must be <= 3, got 4"),
    ("ppo.rollout.top_p=0", "ppo.rollout.top_p must be > 0.0, got 0.0"),
    ("model.dtype=float8", "model.dtype must be one of ['float32', 'bfloat16', 'float16'], got 'float8'"),
    ("sft.epochs=two", "sft.epochs must be an integer, got 'two'"),
    ("lora.enabled=maybe", "lora.enabled must be true or false, got 'maybe'"),
    ("ppo.rollout_correction=tsi", "ppo.rollout_correction must be one of ['none', 'tis', 'mask'], got 'tsi' "
                                   "(did you mean 'tis'?)"),
    ("ppo.loss_aggregation=seq-mean-token-sum-nrom",
     "ppo.loss_aggregation must be one of ['token-mean', 'seq-mean-token-mean', 'seq-mean-token-sum', "
     "'seq-mean-token-sum-norm'], got 'seq-mean-token-sum-nrom' (did you mean 'seq-mean-token-sum-norm'?)"),
    ("ppo.rollout_correction_cap=1", "ppo.rollout_correction_cap must be > 1.0, got 1.0"),
    ("curate.min_annotators=0", "curate.min_annotators must be >= 1, got 0"),
    ("ppo.trainer_logprobs=raw", "ppo.trainer_logprobs must be one of ['processed', 'temperature'], got 'raw'"),
])
def test_bad_values_name_field_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(message)


def test_unknown_key_lists_close_matches():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["lora.rnak=8"])
    assert "unknown config key 'lora.rnak'" in str(err.value)
    assert "did you mean lora.rank" in str(err.value)
    with pytest.raises(ConfigError, match="unknown config key 'sfft'; did you mean sft"):
        load_config(None, ["sfft.lr=1"])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="lora.enabled must be true with model.quantization=4bit"):
        load_config(None, ["model.quantization=4bit"])
    with pytest.raises(ConfigError, match="deepspeed.offload_param needs stage 3, got stage 2"):
        load_config(None, ["deepspeed.offload_param=true"])
    with pytest.raises(ConfigError, match=r"ppo.rollout_batch_size \(24\) must be a multiple of mini_batch_size"):
        load_config(None, ["ppo.rollout_batch_size=24"])
    with pytest.raises(ConfigError, match=r"advantage_estimator=grpo compares .* samples_per_prompt to 2 or more"):
        load_config(None, ["ppo.advantage_estimator=grpo"])
    with pytest.raises(ConfigError, match=r"rollout_batch_size x samples_per_prompt \(8 x 3\) must be a multiple "
                                          r"of mini_batch_size \(16\)"):
        load_config(None, ["ppo.advantage_estimator=rloo", "ppo.samples_per_prompt=3", "ppo.rollout_batch_size=8"])
    with pytest.raises(ConfigError, match=r"mini_batch_size \(16\) must split evenly over value_workers \(3\)"):
        load_config(None, ["ppo.value_workers=3"])
    # Without a value model its rank count is not checked; 8 prompts x 4 answers = two mini-batches of 16.
    grpo = load_config(None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "ppo.rollout_batch_size=8",
                              "ppo.value_workers=3"])
    assert (grpo.ppo.sequences_per_step, grpo.ppo.uses_value_model) == (32, False)
    with pytest.raises(ConfigError, match="ppo.kl.schedule progress ends must increase and end at 1.0"):
        load_config(None, ["ppo.kl.schedule=[[0.5, 0.1], [0.9, 0.05]]"])
    # One update behind without a correction, the ratio's old side is the engine's processed log-probs.
    with pytest.raises(ConfigError, match="ppo.async_rollouts without a rollout_correction takes the engine's"):
        load_config(None, ["ppo.async_rollouts=1", "ppo.trainer_logprobs=temperature"])
    assert load_config(None, ["ppo.async_rollouts=1", "ppo.trainer_logprobs=temperature",
                              "ppo.rollout_correction=tis"]).ppo.async_rollouts == 1
    # The KL estimator follows where the KL goes unless named; k1 is refused as a loss (no expected gradient).
    assert load_config(None).ppo.kl.per_token_estimator == "k1"
    assert load_config(None, ["ppo.kl.mode=loss"]).ppo.kl.per_token_estimator == "k3"
    assert load_config(None, ["ppo.kl.mode=loss", "ppo.kl.estimator=k2"]).ppo.kl.per_token_estimator == "k2"
    with pytest.raises(ConfigError, match="ppo.kl.estimator=k1 cannot be a loss"):
        load_config(None, ["ppo.kl.mode=loss", "ppo.kl.estimator=k1"])
    with pytest.raises(ConfigError, match="curate.mix shares must sum to 1"):
        load_config(None, ["curate.mix={general: 0.5, domain: 0.6}"])
    with pytest.raises(ConfigError, match=r"curate.mix shares must be >= 0, got \{'edge': -0.2\}"):
        load_config(None, ["curate.mix={general: 1.2, edge: -0.2}"])
    with pytest.raises(ConfigError, match=r"ppo.dynamic_sampling drops groups .* needs a group estimator"):
        load_config(None, ["ppo.dynamic_sampling.enabled=true"])
    with pytest.raises(ConfigError, match="ppo.eval_samples=4 samples answers to the held-out prompts: set "
                                          "eval_every too"):
        load_config(None, ["ppo.eval_samples=4"])


def test_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["lora.rank"])


def test_every_field_has_help_text():
    missing = [key for key, _, help_text in describe(Config) if not help_text.strip()]
    assert missing == []


def test_repo_relative_paths_resolve_from_anywhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert resolve_path(Config().model.path) == (REPO / "../shared/models/stories260K-hd32").resolve()


# ---- learning rate by model size (SPEC §2) --------------------------------------------------------------
@pytest.mark.parametrize("size, lr", [(7, 1e-5), (13, 5.4e-6), (70, 1e-6)])
def test_lr_rule_hits_reported_points(size, lr):
    assert sft_learning_rate(size) == pytest.approx(lr, rel=1e-12)


def test_lr_rule_interpolates_on_log_scale():
    # Between 13B and 70B the rule is a power law: log-lr is linear in log-size. At the geometric mean of
    # the sizes the lr is the geometric mean of the rates.
    mid = math.sqrt(13 * 70)
    assert sft_learning_rate(mid) == pytest.approx(math.sqrt(5.4e-6 * 1e-6), rel=1e-12)
    # 10B lies between 7B and 13B: hand value from the 7B–13B segment.
    slope = math.log(5.4e-6 / 1e-5) / math.log(13 / 7)
    assert sft_learning_rate(10) == pytest.approx(1e-5 * (10 / 7) ** slope, rel=1e-12)
    sizes = [1, 3, 7, 10, 13, 30, 70, 180]
    rates = [sft_learning_rate(s) for s in sizes]
    assert rates == sorted(rates, reverse=True) and len(set(rates)) == len(rates)


def test_lr_rule_explicit_wins_and_batch_scales_and_clamps():
    assert sft_learning_rate(7, explicit=3e-4) == 3e-4
    assert sft_learning_rate(7, global_batch=256) == pytest.approx(2e-5, rel=1e-12)  # sqrt(256/64) = 2
    # At or below the reference batch, the reported rate itself: the default sft section's 8 sequences per step
    # took 7B to 3.5e-6 (sqrt(8/64) x 1e-5), a third of what the SPEC reports for it.
    assert sft_learning_rate(7, global_batch=8) == sft_learning_rate(7, global_batch=64)
    assert sft_learning_rate(7, global_batch=8) == pytest.approx(1e-5, rel=1e-12)
    assert sft_learning_rate(7, global_batch=32, reference_batch=8) == pytest.approx(2e-5, rel=1e-12)
    assert sft_learning_rate(7, points=[[7.0, 2e-5], [70.0, 2e-6]]) == pytest.approx(2e-5, rel=1e-12)
    assert sft_learning_rate(0.0004) == SFT_LR_BOUNDS[1]
    with pytest.raises(ConfigError):
        sft_learning_rate(0)


def test_the_sft_rate_points_are_config_values():
    cfg = load_config(None, ["sft.lr_by_size=[[1, 1e-4], [7, 2e-5]]", "sft.lr_reference_batch=16"])
    assert cfg.sft.lr_by_size == [[1.0, 1e-4], [7.0, 2e-5]] and cfg.sft.lr_reference_batch == 16
    assert load_config(None).sft.lr_by_size == [[7.0, 1e-5], [13.0, 5.4e-6], [70.0, 1e-6]]
    with pytest.raises(ConfigError, match=r"^sft.lr_by_size must be at least two \[billions, lr\] pairs"):
        load_config(None, ["sft.lr_by_size=[[7, 1e-5]]"])
    with pytest.raises(ConfigError, match="different sizes"):  # a repeated size divided by zero in the rule
        load_config(None, ["sft.lr_by_size=[[7, 1e-5], [7, 2e-5], [13, 5.4e-6]]"])
