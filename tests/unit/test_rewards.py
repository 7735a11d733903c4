"""Reward terms and their mix (actors/algo/rewards.py) on hand-built English and Chinese responses."""

from __future__ import annotations

from dataclasses import replace
from typing import get_args

import pytest
import torch

from actors.algo.kl import kl_penalized_rewards
from actors.algo.lexicon import Lexicon
from actors.algo.rewards import (
    REWARD_TERMS,
    RewardBatch,
    mix_rewards,
    normalized,
    repetition_score,
    reward_log,
    safety_value,
    term_weight,
)
from common.config import RewardMixConfig, RewardTermName

CFG = RewardMixConfig()  # SPEC defaults: weights 0.6/0.2/0.05/0.05/0.1, 500 chars, 0.1 per 100 chars


def only(*terms: str, **changes) -> RewardMixConfig:
    return replace(CFG, enabled_terms=list(terms), **changes)


def term(name: str, batch: RewardBatch, cfg: RewardMixConfig = CFG) -> torch.Tensor:
    return REWARD_TERMS.get(name)(batch, cfg)


class FixedVerdicts:
    """A safety judge that answers from a table, for terms tested apart from the lexicon."""

    def __init__(self, verdicts: dict[str, str]) -> None:
        self.verdicts = verdicts

    def verdict(self, text: str) -> str:
        return self.verdicts[text]


def test_registry_names_match_the_config_literal():
    assert REWARD_TERMS.names() == sorted(get_args(RewardTermName))


# ---------------------------------------------------------------------------------------------------- rm

def test_rm_term_is_the_scores_as_float32():
    batch = RewardBatch(["a", "b", "c"], rm_scores=torch.tensor([1.0, -2.5, 3.0], dtype=torch.float64))
    values = term("rm", batch)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, torch.tensor([1.0, -2.5, 3.0]))


def test_rm_term_whitens_when_asked():
    batch = RewardBatch(["a", "b", "c"], rm_scores=torch.tensor([1.0, 2.0, 3.0]))
    # mean 2, population std sqrt(2/3): (x − 2) / 0.8165
    expected = torch.tensor([-1.0, 0.0, 1.0]) / (2.0 / 3.0) ** 0.5
    torch.testing.assert_close(term("rm", batch, only("rm", rm_normalize=True)), expected)


# ------------------------------------------------------------------------------------------------ length

@pytest.mark.parametrize(("chars", "expected"), [(0, 0.0), (499, 0.0), (500, 0.0), (501, -0.001), (600, -0.1),
                                                  (1500, -1.0)])
def test_length_term_edges_english(chars, expected):
    batch = RewardBatch(["a" * chars])
    torch.testing.assert_close(term("length", batch), torch.tensor([expected]))


def test_length_term_counts_chinese_characters_not_bytes():
    # 600 CJK characters are 1800 UTF-8 bytes; the penalty must see 600.
    batch = RewardBatch(["好" * 500, "好" * 501, "好" * 600])
    torch.testing.assert_close(term("length", batch), torch.tensor([0.0, -0.001, -0.1]))


def test_length_term_follows_the_configured_slope_and_threshold():
    cfg = only("length", length_threshold_chars=100, length_penalty=0.5)
    torch.testing.assert_close(term("length", RewardBatch(["x" * 300]), cfg), torch.tensor([-1.0]))


# -------------------------------------------------------------------------------------------- repetition

def test_repetition_score_hand_values():
    # tokens a b c a b c: 1 − unique ratio = 1 − 3/6 = 0.5; trigrams abc bca cab abc → 1 − 3/4 = 0.25
    assert repetition_score("a b c a b c", ngram=3, unique_share=0.5) == pytest.approx(0.375, rel=1e-12)
    assert repetition_score("a b c a b c", ngram=3, unique_share=0.0) == pytest.approx(0.25, rel=1e-12)
    assert repetition_score("a b c a b c", ngram=3, unique_share=1.0) == pytest.approx(0.5, rel=1e-12)
    # every CJK character is a token: 好好好好 → 1 − 1/4 = 0.75; trigrams 好好好 ×2 → 0.5
    assert repetition_score("好好好好", ngram=3, unique_share=0.5) == pytest.approx(0.625, rel=1e-12)


def test_repetition_term_is_zero_without_repeats_and_within_minus_one_to_zero():
    responses = ["The cat sat on a mat.", "猫坐在垫子上", "", "a b c a b c", "好好好好", "ha " * 200, "哈" * 300]
    values = term("repetition", RewardBatch(responses))
    torch.testing.assert_close(values[:3], torch.zeros(3))
    torch.testing.assert_close(values[3:5], torch.tensor([-0.375, -0.625]))
    assert bool(((values >= -1.0) & (values <= 0.0)).all())
    assert values[5] < -0.98 and values[6] < -0.98  # one token looped is nearly the floor


# ------------------------------------------------------------------------------------------------ safety

def test_safety_value_per_verdict():
    assert safety_value("clean", 0.1, 1.0) == 0.1
    assert safety_value("ambiguous", 0.1, 1.0) == 0.0
    assert safety_value("harmful", 0.1, 1.0) == -1.0
    with pytest.raises(ValueError, match="one of"):
        safety_value("spicy", 0.1, 1.0)


def test_safety_term_with_a_lexicon_in_english_and_chinese():
    lexicon = Lexicon.from_terms(
        {"test/en-low": ["darn", "heck"], "test/zh-low": ["笨蛋"], "test/zh-high": ["炸药制作"]},
        {"test/en-low": "en", "test/zh-low": "zh", "test/zh-high": "zh"},
        high_severity=["test/zh-high"],
    )
    responses = ["What a lovely day.", "Darn, I missed the bus.", "darn it, what the heck",
                 "今天天气很好", "你这个笨蛋", "教你炸药制作的方法"]
    batch = RewardBatch(responses, safety_judge=lexicon)
    # clean +0.1 · one low-severity word: ambiguous 0 · two distinct words or a high-severity one: −1
    expected = torch.tensor([0.1, 0.0, -1.0, 0.1, 0.0, -1.0])
    torch.testing.assert_close(term("safety", batch), expected)


def test_safety_term_uses_the_configured_bonus_and_penalty():
    judge = FixedVerdicts({"ok": "clean", "bad": "harmful"})
    cfg = only("safety", safe_bonus=0.25, unsafe_penalty=3.0)
    torch.testing.assert_close(term("safety", RewardBatch(["ok", "bad"], safety_judge=judge), cfg),
                               torch.tensor([0.25, -3.0]))


# ---------------------------------------------------------------------------------------------------- kl

def test_kl_term_is_minus_coef_times_sequence_kl():
    batch = RewardBatch(["a", "b"], seq_kl=torch.tensor([2.0, 10.0]), kl_coef=0.05)
    torch.testing.assert_close(term("kl", batch), torch.tensor([-0.1, -0.5]))


# --------------------------------------------------------------------------------------------------- mix

def mixed_batch() -> RewardBatch:
    # "the cat sat": no repeats, 11 chars. "好好好好": repetition −0.625. Both clean.
    responses = ["the cat sat", "好好好好"]
    return RewardBatch(responses, rm_scores=torch.tensor([1.0, 2.0]), seq_kl=torch.tensor([2.0, 4.0]),
                       kl_coef=0.05, safety_judge=FixedVerdicts(dict.fromkeys(responses, "clean")))


def test_mix_with_spec_defaults_by_hand():
    mixed = mix_rewards(mixed_batch(), CFG)
    # terminal = 0.6·rm + 0.05·length + 0.05·repetition + 0.1·safety
    #          = [0.6 + 0 + 0 + 0.01, 1.2 + 0 − 0.03125 + 0.01]
    torch.testing.assert_close(mixed.terminal_reward, torch.tensor([0.61, 1.17875]))
    # weighted kl = (0.2 / 0.2) · (−0.05 · [2, 4]) = [−0.1, −0.2]: at the SPEC share the controller's
    # coefficient applies unchanged
    torch.testing.assert_close(mixed.weighted_terms["kl"], torch.tensor([-0.1, -0.2]))
    torch.testing.assert_close(mixed.total, torch.tensor([0.51, 0.97875]))
    assert mixed.kl_coef_per_token == pytest.approx(0.05, rel=1e-12)
    assert set(mixed.terms) == {"rm", "kl", "length", "repetition", "safety"}


def long_batch() -> RewardBatch:
    """Every term non-zero somewhere: 600 characters each (length −0.1), looped text, one harmful verdict."""
    responses = ["the cat sat " * 50, "好好好好" * 150]
    judge = FixedVerdicts({responses[0]: "clean", responses[1]: "harmful"})
    return replace(mixed_batch(), responses=responses, safety_judge=judge)


@pytest.mark.parametrize("name", ["rm", "kl", "length", "repetition", "safety"])
def test_each_term_alone_totals_its_weighted_value(name):
    batch = long_batch()
    mixed = mix_rewards(batch, only(name))
    expected = term_weight(CFG, name) * term(name, batch)
    torch.testing.assert_close(mixed.total, expected)
    assert list(mixed.terms) == [name]


@pytest.mark.parametrize("name", ["rm", "kl", "length", "repetition", "safety"])
def test_enabling_a_term_changes_the_total_by_exactly_its_weighted_value(name):
    batch = long_batch()
    others = [t for t in CFG.enabled_terms if t != name]
    without = mix_rewards(batch, only(*others))
    with_it = mix_rewards(batch, only(*others, name))
    torch.testing.assert_close(with_it.total - without.total, with_it.weighted_terms[name])


def test_kl_stays_out_of_the_terminal_reward_and_sets_the_per_token_coefficient():
    batch = mixed_batch()
    without_kl = mix_rewards(batch, only("rm", "length", "repetition", "safety"))
    with_kl = mix_rewards(batch, CFG)
    torch.testing.assert_close(with_kl.terminal_reward, without_kl.terminal_reward)
    assert without_kl.kl_coef_per_token == 0.0
    assert with_kl.kl_coef_per_token == pytest.approx(0.05, rel=1e-12)
    doubled = mix_rewards(batch, replace(CFG, kl_weight=0.4))
    assert doubled.kl_coef_per_token == pytest.approx(0.1, rel=1e-12)


def test_per_token_kl_with_the_returned_coefficient_sums_to_the_mixed_total():
    """The engine's token rewards, summed over each response, must equal `total`: KL charged once."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.2, -0.1, -0.4]], dtype=torch.float64)
    ref_logp = torch.tensor([[-1.5, -2.5, -1.0, 0.0], [-1.3, -1.2, -1.1, -1.4]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    seq_kl = ((logp - ref_logp) * mask).sum(-1)  # k1 estimator: [1.5, 4.0]
    batch = replace(mixed_batch(), seq_kl=seq_kl)
    mixed = mix_rewards(batch, CFG)
    token_rewards, _ = kl_penalized_rewards(mixed.terminal_reward, logp, ref_logp, mask,
                                            coef=mixed.kl_coef_per_token)
    torch.testing.assert_close(token_rewards.sum(-1).float(), mixed.total)


def test_unknown_term_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown reward term 'klx'; known: kl, length, repetition, rm, safety"):
        mix_rewards(mixed_batch(), only("rm", "klx"))


def test_missing_input_for_an_enabled_term_is_named():
    with pytest.raises(ValueError, match=r"'rm' is enabled but RewardBatch.rm_scores"):
        mix_rewards(RewardBatch(["a"]), only("rm"))
    with pytest.raises(ValueError, match=r"'safety' is enabled but RewardBatch.safety_judge"):
        mix_rewards(RewardBatch(["a"]), only("safety"))


def test_scores_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"rm_scores must have shape \[2\]"):
        RewardBatch(["a", "b"], rm_scores=torch.zeros(3))


def test_reward_log_has_every_term_raw_and_weighted():
    row = reward_log(mix_rewards(mixed_batch(), CFG))
    assert row["reward/rm"] == pytest.approx(1.5)
    assert row["reward/rm_weighted"] == pytest.approx(0.9)
    assert row["reward/total"] == pytest.approx((0.51 + 0.97875) / 2)
    assert row["reward/kl_coef_per_token"] == pytest.approx(0.05)
    assert {"reward/kl", "reward/length", "reward/repetition", "reward/safety", "reward/terminal"} <= set(row)


# ------------------------------------------------------------------------------ normalise-then-sum, clipping

def test_normalized_is_a_z_score_over_the_batch_or_each_group():
    values = torch.tensor([1.0, 3.0, 10.0, 10.0], dtype=torch.float64)
    # Batch: mean 6, unbiased std sqrt(((-5)^2 + (-3)^2 + 4^2 + 4^2) / 3) = sqrt(22).
    expected = (values - 6.0) / (22 ** 0.5 + 1e-4)
    torch.testing.assert_close(normalized(values, "batch"), expected, rtol=1e-12, atol=0)
    # Groups of 2: (1, 3) → mean 2, std sqrt(2); (10, 10) → std 0, so both become 0.
    root2 = 2 ** 0.5 + 1e-4
    torch.testing.assert_close(normalized(values, "group", 2),
                               torch.tensor([-1 / root2, 1 / root2, 0.0, 0.0], dtype=torch.float64), rtol=1e-12, atol=0)
    assert normalized(values, "none") is values


def test_normalise_then_sum_keeps_the_weights_meaning_across_scales_and_never_touches_kl():
    """An rm score in the hundreds and a length penalty near zero: summed raw, rm alone decides; normalised
    first, each moves the total by its weight."""
    batch = RewardBatch(["short", "x" * 700], rm_scores=torch.tensor([300.0, 100.0]), seq_kl=torch.tensor([2.0, 4.0]),
                        kl_coef=0.05)
    cfg = only("rm", "length", "kl", term_normalization="batch", rm_weight=0.6, length_weight=0.05)
    mixed = mix_rewards(batch, cfg)
    # Two values a, b: each lies d = |a − b| / 2 from their mean and the unbiased std is sqrt(2)·d, so each
    # becomes ±d / (sqrt(2)·d + 1e-4). rm: d = 100; length: 0 and −0.1 × 200 / 100 = −0.2, so d = 0.1.
    z_rm, z_length = 100 / (2 ** 0.5 * 100 + 1e-4), 0.1 / (2 ** 0.5 * 0.1 + 1e-4)
    torch.testing.assert_close(mixed.weighted_terms["rm"], torch.tensor([0.6 * z_rm, -0.6 * z_rm]))
    torch.testing.assert_close(mixed.weighted_terms["length"], torch.tensor([0.05 * z_length, -0.05 * z_length]))
    torch.testing.assert_close(mixed.terminal_reward, torch.tensor([0.6 * z_rm + 0.05 * z_length,
                                                                    -0.6 * z_rm - 0.05 * z_length]))
    torch.testing.assert_close(mixed.terms["kl"], torch.tensor([-0.1, -0.2]))  # raw, as PPO charges it per token
    assert mixed.kl_coef_per_token == pytest.approx(0.05)
    torch.testing.assert_close(mixed.terms["rm"], torch.tensor([300.0, 100.0]))  # logged raw


def test_terms_and_the_total_are_clipped_to_their_ranges():
    batch = RewardBatch(["a", "b", "c"], rm_scores=torch.tensor([-5.0, 0.5, 5.0]))
    mixed = mix_rewards(batch, only("rm", rm_weight=2.0, term_clip=[-1.0, 1.0]))
    torch.testing.assert_close(mixed.terminal_reward, torch.tensor([-2.0, 1.0, 2.0]))
    mixed = mix_rewards(batch, only("rm", rm_weight=2.0, term_clip=[-1.0, 1.0], total_clip=[-1.5, 1.5]))
    torch.testing.assert_close(mixed.terminal_reward, torch.tensor([-1.5, 1.0, 1.5]))


def test_missing_eos_penalty_charges_cut_answers_after_normalisation_and_clip():
    """TRL's missing_eos_penalty: 0.5 off each answer cut at the token limit, whatever the normalisation (a batch
    of cut answers still pays) and after total_clip (which would otherwise cancel it)."""
    batch = RewardBatch(["a", "b", "c"], rm_scores=torch.tensor([-5.0, 0.5, 5.0]),
                        ended=torch.tensor([True, False, False]))
    mixed = mix_rewards(batch, only("rm", rm_weight=2.0, total_clip=[-1.5, 1.5], missing_eos_penalty=0.5))
    torch.testing.assert_close(mixed.terminal_reward, torch.tensor([-1.5, 1.0 - 0.5, 1.5 - 0.5]))
    torch.testing.assert_close(mixed.terms["missing_eos"], torch.tensor([0.0, -0.5, -0.5]))
    assert reward_log(mixed)["reward/missing_eos"] == pytest.approx(-1.0 / 3)
    normalised = mix_rewards(replace(batch, ended=torch.tensor([False, False, False])),
                             only("rm", term_normalization="batch", missing_eos_penalty=0.5))
    torch.testing.assert_close(normalised.terminal_reward.mean(), torch.tensor(-0.5))
    unset = mix_rewards(batch, only("rm", rm_weight=2.0, total_clip=[-1.5, 1.5]))
    assert "missing_eos" not in unset.terms
    with pytest.raises(ValueError, match="RewardBatch.ended was not given"):
        mix_rewards(RewardBatch(["a"], rm_scores=torch.tensor([1.0])), only("rm", missing_eos_penalty=0.5))


@pytest.mark.parametrize("override, message", [
    ("ppo.reward.missing_eos_penalty=-1", "ppo.reward.missing_eos_penalty must be >= 0.0, got -1.0"),
    ("ppo.reward.functions=[{callable: 'm:f', name: missing_eos}]",
     "ppo.reward.functions: term name(s) ['missing_eos'] repeat or clash with a built-in term ['rm', 'kl', "
     "'length', 'repetition', 'safety', 'missing_eos']; give each function its own name"),
    ("ppo.reward.term_clip=[1, 0]", "ppo.reward.term_clip must be [low, high] with low < high, got [1.0, 0.0]"),
    ("ppo.reward.total_clip=[1]", "ppo.reward.total_clip must be [low, high] with low < high, got [1.0]"),
    ("ppo.reward.term_normalization=group", "ppo.reward.term_normalization=group normalises over the answers to each "
                                            "prompt: set samples_per_prompt to 2 or more (got 1)"),
])
def test_bad_normalisation_and_clip_settings_are_refused_on_load(override, message):
    from common.config import load_config
    from common.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == message
