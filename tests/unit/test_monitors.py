"""Training-health monitors (actors/algo/monitors.py) on hand-built series and responses, and their config."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from actors.algo.monitors import Alarm, HealthMonitor, fitted_line, most_severe_action, robust_z, trend_strength
from actors.algo.response_stats import (filler_density, jaccard_similarity, mean_pairwise_similarity, phrase_tokens,
                                        response_metrics)
from common.config import MonitorConfig, load_config
from common.errors import ConfigError

CFG = MonitorConfig()
PHRASES = phrase_tokens(CFG.filler_phrases)

DIVERSE = {
    "p1": ["The cat sat quietly on the warm mat.", "A dog barked loudly at the passing mailman."],
    "p2": ["猫在温暖的垫子上安静地坐着", "小狗对着路过的邮递员大声叫"],
    "p3": ["Rain fell over the old harbour all night.", "She baked bread before sunrise."],
}


def monitors_of(alarms: list[Alarm], monitor: str) -> list[Alarm]:
    return [alarm for alarm in alarms if alarm.monitor == monitor]


def feed(monitor: HealthMonitor, series: list[dict], responses=None, first_step: int = 0) -> list[list[Alarm]]:
    return [monitor.observe(first_step + i, metrics, responses) for i, metrics in enumerate(series)]


# ------------------------------------------------------------------------------------------- statistics

def test_robust_z_hand_values():
    # median 3, |deviations| 2 1 0 1 2 → MAD 1 → σ = 1.4826
    assert robust_z(9.0, [1, 2, 3, 4, 5]) == pytest.approx(6.0 / 1.4826, rel=1e-12)
    assert robust_z(0.0, [1, 2, 3, 4, 5]) == pytest.approx(-3.0 / 1.4826, rel=1e-12)
    # median 1, |deviations| 0 0 0 1 4 → MAD 0 → σ = 1.2533 × mean(0,0,0,1,4) = 1.2533
    assert robust_z(3.0, [1, 1, 1, 2, 5]) == pytest.approx(2.0 / 1.2533, rel=1e-12)
    assert robust_z(2.0, [2, 2, 2]) == 0.0
    assert robust_z(2.5, [2, 2, 2]) == math.inf


def test_trend_strength_hand_values():
    assert trend_strength([1, 2, 3, 4]) == pytest.approx(1.0, rel=1e-12)
    assert trend_strength([4, 3, 2, 1]) == pytest.approx(-1.0, rel=1e-12)
    assert trend_strength([5, 5, 5]) == 0.0
    # t 0 1 2, v 1 3 2: cov = (−1)(−1) + 0·1 + 1·0 = 1; var_t = 2; var_v = 2 → 1/2
    assert trend_strength([1, 3, 2]) == pytest.approx(0.5, rel=1e-12)


def test_fitted_line_of_a_straight_series_is_exact():
    start, end = fitted_line([100 + 10 * t for t in range(10)])
    assert (start, end) == (pytest.approx(100.0, rel=1e-12), pytest.approx(190.0, rel=1e-12))


# ------------------------------------------------------------------------------------- response metrics

def test_jaccard_of_unigram_and_bigram_sets():
    # {the, cat, sat, the·cat, cat·sat} vs {the, cat, ran, the·cat, cat·ran}: 3 shared of 7
    assert jaccard_similarity("The cat sat.", "the cat ran") == pytest.approx(3 / 7, rel=1e-12)
    # {我, 爱, 猫, 我爱, 爱猫} vs {我, 爱, 狗, 我爱, 爱狗}: 3 shared of 7
    assert jaccard_similarity("我爱猫", "我爱狗") == pytest.approx(3 / 7, rel=1e-12)
    assert jaccard_similarity("same words here", "Same words, here!") == 1.0
    assert jaccard_similarity("yes", "no") == 0.0
    assert jaccard_similarity("", "...") == 1.0


def test_mean_pairwise_similarity_only_pairs_responses_to_the_same_prompt():
    groups = {"p1": ["the cat sat", "the cat ran"], "p2": ["我爱猫", "我爱猫", "我爱狗"], "p3": ["alone"]}
    # p1: 3/7; p2 pairs: 1, 3/7, 3/7; p3 has no pair
    expected = (3 / 7 + 1 + 3 / 7 + 3 / 7) / 4
    assert mean_pairwise_similarity(groups) == pytest.approx(expected, rel=1e-12)
    assert mean_pairwise_similarity({"p": ["one"]}) is None


def test_with_one_answer_per_prompt_neighbouring_answers_are_compared():
    """samples_per_prompt=1 (PPO's default): answers to different prompts that collapse onto one template are
    compared neighbour to neighbour (before: no figure at all, so the monitor never looked)."""
    assert mean_pairwise_similarity({"p": ["one"], "q": ["two"]}) == 0.0
    template = {f"p{i}": ["as an ai i cannot help with that"] for i in range(4)}
    assert mean_pairwise_similarity(template) == 1.0
    varied = {"p": ["the cat sat"], "q": ["the cat ran"], "r": ["a dog"]}
    assert mean_pairwise_similarity(varied) == pytest.approx((3 / 7 + 0.0) / 2, rel=1e-12)


def test_filler_density_english_and_chinese():
    # 10 tokens; "in conclusion" (2) + "it is important to note" (5) = 7 covered
    text = "In conclusion, it is important to note that cats sleep."
    assert filler_density(text, PHRASES) == pytest.approx(0.7, rel=1e-12)
    # 8 characters; 总而言之 covers 4
    assert filler_density("总而言之猫很可爱", PHRASES) == pytest.approx(0.5, rel=1e-12)
    assert filler_density("Cats sleep a lot.", PHRASES) == 0.0
    assert filler_density("", PHRASES) == 0.0


def test_filler_density_counts_the_longest_phrase_once():
    phrases = phrase_tokens(["it is", "it is important to note"])
    assert filler_density("it is important to note cats", phrases) == pytest.approx(5 / 6, rel=1e-12)


def test_response_metrics_of_identical_responses():
    metrics = response_metrics({"p": ["the cat sat on the mat"] * 4}, PHRASES)
    # 24 unigrams, 5 distinct; 20 bigrams, 5 distinct
    assert metrics["distinct_1"] == pytest.approx(5 / 24, rel=1e-12)
    assert metrics["distinct_2"] == pytest.approx(5 / 20, rel=1e-12)
    assert metrics["pairwise_similarity"] == 1.0
    assert metrics["filler_density"] == 0.0
    assert metrics["mean_chars"] == 22.0
    assert response_metrics({}, PHRASES) == {}


# ---------------------------------------------------------------------------------------- mode collapse

def test_mode_collapse_fires_on_identical_responses():
    identical = {f"p{i}": ["the cat sat on the mat"] * 4 for i in range(4)}  # 16 copies
    alarms = monitors_of(HealthMonitor(CFG).observe(0, {}, identical), "mode_collapse")
    # distinct-1 = 5/96 < 0.1, distinct-2 = 5/80 < 0.2, similarity 1 > 0.9
    assert {alarm.metric for alarm in alarms} == {"distinct_1", "distinct_2", "pairwise_similarity"}
    assert all(alarm.action == CFG.collapse_action == "raise_kl" for alarm in alarms)


def test_mode_collapse_silent_on_diverse_responses():
    assert HealthMonitor(CFG).observe(0, {"entropy": 2.0}, DIVERSE) == []


def test_entropy_floor_and_its_edge():
    low = HealthMonitor(CFG).observe(0, {"entropy": 0.1})
    assert [(a.metric, a.value, a.threshold) for a in low] == [("entropy", 0.1, 0.3)]
    assert HealthMonitor(CFG).observe(0, {"entropy": 0.3}) == []


def test_distinct_threshold_is_strict():
    responses = {"p": ["the cat sat on the mat"] * 4}
    at_edge = replace(CFG, min_distinct_1=5 / 24, min_distinct_2=0.0, max_pairwise_similarity=1.0)
    assert HealthMonitor(at_edge).observe(0, {}, responses) == []
    above_edge = replace(at_edge, min_distinct_1=0.21)
    assert [a.metric for a in HealthMonitor(above_edge).observe(0, {}, responses)] == ["distinct_1"]


# ------------------------------------------------------------------------------------------ instability

def stable_series(steps: int = 40, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"loss": 1.0 + rng.gauss(0, 0.05), "grad_norm": 2.0 + rng.gauss(0, 0.2), "kl": 3.0}
            for _ in range(steps)]


def test_spike_detector_quiet_on_a_noisy_but_stable_series():
    monitor = HealthMonitor(CFG)
    assert all(alarms == [] for alarms in feed(monitor, stable_series()))
    assert monitor.last_healthy_step == 39


def test_spike_detector_fires_on_an_injected_loss_spike():
    monitor = HealthMonitor(CFG)
    feed(monitor, stable_series())
    alarms = monitor.observe(40, {"loss": 5.0, "grad_norm": 2.0, "kl": 3.0})
    assert [(a.monitor, a.metric, a.action, a.value) for a in alarms] == [("instability", "loss", "rollback", 5.0)]
    assert monitor.last_healthy_step == 39


def test_grad_norm_spikes_count_upwards_only_and_loss_both_ways():
    monitor = HealthMonitor(CFG)
    feed(monitor, stable_series())
    assert monitor.observe(40, {"loss": 1.0, "grad_norm": 0.0}) == []
    assert [a.metric for a in monitor.observe(41, {"loss": 1.0, "grad_norm": 50.0})] == ["grad_norm"]
    assert [a.metric for a in monitor.observe(42, {"loss": -3.0, "grad_norm": 2.0})] == ["loss"]


def test_spike_detection_waits_for_min_history():
    monitor = HealthMonitor(CFG)
    feed(monitor, [{"loss": 1.0}, {"loss": 1.1}, {"loss": 0.9}, {"loss": 1.0}])  # 4 < min_history 5
    assert monitor.observe(4, {"loss": 100.0}) == []
    assert [a.metric for a in monitor.observe(5, {"loss": 100.0})] == ["loss"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_metrics_fire(bad):
    monitor = HealthMonitor(CFG)
    feed(monitor, stable_series(10))
    alarms = monitor.observe(10, {"loss": 1.0, "grad_norm": bad, "reward/total": bad})
    assert {(a.metric, a.action) for a in alarms} == {("grad_norm", "rollback"), ("reward/total", "rollback")}


def test_kl_explosion_edge():
    assert HealthMonitor(CFG).observe(0, {"kl": 30.0}) == []
    alarms = HealthMonitor(CFG).observe(0, {"kl": 30.5})
    assert [(a.metric, a.value, a.threshold, a.action) for a in alarms] == [("kl", 30.5, 30.0, "raise_kl")]


# ---------------------------------------------------------------------------------------- reward hacking

def rising(start: float, step: float, n: int = 10) -> list[float]:
    return [start + step * t for t in range(n)]


def test_hacking_fires_when_rm_rises_while_gold_falls():
    monitor = HealthMonitor(CFG)
    steps = [{"rm_reward": rm, "gold_reward": gold} for rm, gold in zip(rising(0.0, 0.1), rising(1.0, -0.05))]
    history = feed(monitor, steps)
    assert all(alarms == [] for alarms in history[:9])  # window of 10 not full yet
    [alarm] = history[9]
    assert (alarm.monitor, alarm.metric, alarm.action) == ("reward_hacking", "gold_reward", "raise_kl")
    assert alarm.value == pytest.approx(-1.0, rel=1e-12) and alarm.threshold == -0.6


def test_hacking_silent_when_rm_and_gold_rise_together():
    steps = [{"rm_reward": rm, "gold_reward": gold} for rm, gold in zip(rising(0.0, 0.1), rising(1.0, 0.05))]
    assert all(alarms == [] for alarms in feed(HealthMonitor(CFG), steps))


def test_hacking_fires_on_rising_filler_density_without_gold():
    monitor = HealthMonitor(CFG)
    fired = []
    for t, rm in enumerate(rising(0.0, 0.1)):
        # t filler tokens ("总而言之" is 4, "in conclusion" 2) grow the density from 0 to ~0.6
        response = "in conclusion " * t + "总而言之" * t + "cats sleep in the sun"
        fired += monitors_of(monitor.observe(t, {"rm_reward": rm}, {"p": [response]}), "reward_hacking")
    [alarm] = fired
    assert (alarm.step, alarm.metric, alarm.action) == (9, "filler_density", "raise_kl")


def test_hacking_fires_on_length_growth_without_gold():
    monitor = HealthMonitor(CFG)
    fired = []
    for t, rm in enumerate(rising(0.0, 0.1)):
        response = "The cat sat on the mat and then " + "went on and on " * (10 + 2 * t)
        fired += monitors_of(monitor.observe(t, {"rm_reward": rm}, {"p": [response]}), "reward_hacking")
    assert [(a.step, a.metric) for a in fired] == [(9, "mean_chars")]


def test_hacking_silent_when_rm_rises_on_steady_responses():
    monitor = HealthMonitor(CFG)
    alarms = [monitor.observe(t, {"rm_reward": rm}, DIVERSE) for t, rm in enumerate(rising(0.0, 0.1))]
    assert all(a == [] for a in alarms)


def test_hacking_silent_when_filler_rises_but_rm_does_not():
    monitor = HealthMonitor(CFG)
    fired = []
    for t in range(10):
        response = "in conclusion " * t + "cats sleep in the sun"
        fired += monitors_of(monitor.observe(t, {"rm_reward": 1.0}, {"p": [response]}), "reward_hacking")
    assert fired == []


# --------------------------------------------------------------------------------------------- actions

def test_configured_action_is_returned():
    monitor = HealthMonitor(replace(CFG, spike_action="stop", nonfinite_action="warn"))
    feed(monitor, stable_series(10))
    assert [a.action for a in monitor.observe(10, {"loss": 50.0})] == ["stop"]
    assert [a.action for a in monitor.observe(11, {"loss": math.nan})] == ["warn"]


def test_raise_kl_cools_down_to_warn():
    monitor = HealthMonitor(replace(CFG, raise_kl_cooldown=2))
    actions = [[a.action for a in monitor.observe(t, {"entropy": 0.0})] for t in range(5)]
    assert actions == [["raise_kl"], ["warn"], ["warn"], ["raise_kl"], ["warn"]]


def test_rollbacks_beyond_the_budget_become_stop():
    """The budget counts rollbacks performed: an alarm with nothing to restore yet (no checkpoint before the
    first save: the loop logs rollback_unavailable) spends none; once one has happened, the next alarm stops."""
    monitor = HealthMonitor(replace(CFG, max_rollbacks=1))
    first = monitor.observe(0, {"loss": math.nan, "grad_norm": math.nan})
    assert [a.action for a in first] == ["rollback", "rollback"]
    unavailable = monitor.observe(1, {"loss": math.nan})  # the loop found no checkpoint to restore
    assert [a.action for a in unavailable] == ["rollback"] and monitor.rollbacks == 0
    monitor.rolled_back_to(0)  # one step's rollback, however many alarms asked for it
    second = monitor.observe(2, {"loss": math.nan})
    assert [a.action for a in second] == ["stop"]
    assert "rollback budget of 1 spent" in second[0].message
    # Checkpoints saved, none old enough: the rollback can never come, and the alarm spends the budget as one.
    never = HealthMonitor(replace(CFG, max_rollbacks=1))
    never.observe(0, {"loss": math.nan})
    never.rollback_impossible()
    assert [a.action for a in never.observe(1, {"loss": math.nan})] == ["stop"]


def test_last_healthy_step_and_rollback_target():
    monitor = HealthMonitor(CFG)
    feed(monitor, stable_series(6))
    assert monitor.observe(6, {"loss": math.nan}) != []
    assert monitor.last_healthy_step == 5
    assert monitor.rollback_target([0, 2, 4, 6]) == 4
    assert monitor.rollback_target([6, 8]) is None
    monitor.rolled_back_to(2)
    assert monitor.last_healthy_step == 2
    # only steps 0-2 remain in the loss history, fewer than min_history (5): no spike test yet
    assert monitor.observe(3, {"loss": 100.0}) == []


def test_most_severe_action():
    def alarm(action: str) -> Alarm:
        return Alarm(0, "m", "x", 0.0, 0.0, action, "")
    assert most_severe_action([]) is None
    assert most_severe_action([alarm("warn"), alarm("rollback"), alarm("raise_kl")]) == "rollback"
    assert most_severe_action([alarm("stop"), alarm("warn")]) == "stop"
    assert alarm("warn").to_dict()["action"] == "warn"


# ----------------------------------------------------------------------------------------------- config

def test_config_loads_with_the_reward_and_monitor_sections():
    cfg = load_config()
    assert cfg.ppo.monitor == MonitorConfig()
    assert cfg.ppo.reward.enabled_terms == ["rm", "kl", "length", "repetition", "safety"]
    assert (cfg.ppo.reward.rm_weight, cfg.ppo.reward.kl_weight, cfg.ppo.reward.length_weight,
            cfg.ppo.reward.repetition_weight, cfg.ppo.reward.safety_weight) == (0.6, 0.2, 0.05, 0.05, 0.1)
    assert load_config(overrides=["ppo.monitor.spike_z=8", "ppo.reward.enabled_terms=[rm]"]).ppo.monitor.spike_z == 8


@pytest.mark.parametrize(("override", "message"), [
    ("ppo.monitor.spike_z=0", "ppo.monitor.spike_z must be > 0"),
    ("ppo.monitor.min_distinct_1=1.5", "ppo.monitor.min_distinct_1 must be <= 1"),
    ("ppo.monitor.rollback_lr_factor=1.0", "ppo.monitor.rollback_lr_factor must be < 1"),
    ("ppo.monitor.spike_action=explode", "ppo.monitor.spike_action must be one of"),
    ("ppo.monitor.min_history=50", "ppo.monitor.min_history (50) must be <= window (20)"),
    ("ppo.reward.enabled_terms=[rm,kll]", "ppo.reward.enabled_terms[1] must be one of"),
    ("ppo.reward.enabled_terms=[rm,rm]", "ppo.reward.enabled_terms lists rm more than once"),
    ("ppo.reward.enabled_terms=[]", "ppo.reward.enabled_terms must name at least one"),
])
def test_bad_monitor_and_reward_config_names_the_dotted_field(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(overrides=[override])
    assert message in str(raised.value)


def test_a_restored_monitor_judges_the_next_steps_as_the_unbroken_one():
    """Saved in the PPO checkpoint: a fresh monitor after a resume had a new rollback budget, no healthy step to
    roll back to, and no history to see the next spike against."""
    import json

    unbroken = HealthMonitor(replace(CFG, max_rollbacks=1))
    feed(unbroken, stable_series())
    unbroken.observe(40, {"loss": math.nan})
    unbroken.rolled_back_to(39)  # spends the one rollback
    resumed = HealthMonitor(replace(CFG, max_rollbacks=1))
    resumed.restore(json.loads(json.dumps(unbroken.state())))  # through state.json
    assert resumed.last_healthy_step == unbroken.last_healthy_step == 39 and resumed.rollbacks == 1
    for monitor in (unbroken, resumed):
        assert [(a.metric, a.action) for a in monitor.observe(41, {"loss": 5.0, "grad_norm": 2.0})] == \
            [("loss", "stop")]  # the spike is seen against the history, and the budget is spent: stop


def test_the_gold_reward_is_the_named_reward_function_and_must_be_one():
    """ppo.monitor.gold_reward names a plug-in reward function (weight 0: logged, not trained on); its raw score is
    the monitor's gold reward, the signal the RM score is checked against for hacking (before: never supplied)."""
    from actors.ppo_loop import health_inputs
    from common.config import load_config
    from common.errors import ConfigError

    train = {"policy/loss": 0.5, "policy/grad_norm": 1.0, "policy/entropy": 2.0}
    metrics = {"kl": 0.1, "reward/rm_mean": 0.3, "reward/exact": 0.75}
    assert health_inputs(metrics, train, "exact")["gold_reward"] == 0.75
    assert "gold_reward" not in health_inputs(metrics, train, None)
    function = "ppo.reward.functions=[{callable: 'actors.reward_library:mentions_answer', name: exact, weight: 0}]"
    assert load_config(None, [function, "ppo.monitor.gold_reward=exact"]).ppo.monitor.gold_reward == "exact"
    with pytest.raises(ConfigError, match=r"^ppo.monitor.gold_reward='exact' names no term of reward.functions"):
        load_config(None, ["ppo.monitor.gold_reward=exact"])
