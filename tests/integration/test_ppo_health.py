"""Training-health guards on the real PPO engine (vLLM rollouts, DeepSpeed policy/value ranks, a reference
actor) with the tiny model: an injected NaN trips the instability guard and the rollback restores the last
healthy checkpoint; greedy sampling trips the mode-collapse alarm and its action raises the KL coefficient;
a deliberately hackable filler reward trips the reward-hacking monitor, whose stop action changes the
outcome, and the mixed reward hacks less than the reward model alone (slow)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from actors.chat import encode_prompt
from actors.ppo_loop import PPOLoop
from actors.protocol import TokenBatch
from common.config import load_config
from common.metrics import read_jsonl
from jobs.ppo import run
from tests.conftest import TINY_CPU

pytestmark = [pytest.mark.integration, pytest.mark.ray]

# 8 prompts, 16 rollouts a step: every prompt is answered twice, so the pairwise similarity of responses to
# the same prompt is measured each step.
SHORT = ["ppo.rollout_batch_size=16", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1", "ppo.lr=2e-4",
         "ppo.value_lr=1e-4", "ppo.max_prompts=8", "ppo.export=false", "ppo.kl.controller=fixed",
         "ppo.rollout.max_new_tokens=16", "ppo.rollout.max_prompt_tokens=96", "ppo.reward.rm_source=keyword",
         "ppo.reward.enabled_terms=[rm, kl]", "run.seed=7"]


def alarms_of(output_dir) -> list[dict]:
    return read_jsonl(output_dir / "alarms.jsonl")


# ---- instability: injected NaN → rollback ----------------------------------------------------------------
def probe_tokens(loop: PPOLoop) -> TokenBatch:
    """A fixed prompt + response whose log-probs fingerprint the policy weights."""
    prompt = encode_prompt(loop.tokenizer, [{"role": "user", "content": "Tell me a story."}])
    response = loop.tokenizer(" Once upon a time there was a happy dog.", add_special_tokens=False)["input_ids"]
    return TokenBatch.from_samples([prompt], [response], loop.tokenizer.pad_token_id)


def test_injected_nan_rolls_back_to_the_last_healthy_checkpoint(ray_session, tmp_path):
    cfg = load_config(TINY_CPU, [f"run.output_root={tmp_path}", *SHORT, "ppo.steps=4", "ppo.inject_nan_at_step=4",
                                 "ppo.report_prompts=[]"])
    loop = PPOLoop(cfg, cfg.run.output_dir("ppo"))
    try:
        loop.start()
        probe = probe_tokens(loop)
        healthy = [loop.step(step) for step in (1, 2)]
        loop.save_checkpoint(2)
        at_checkpoint = loop.roles.policy.call("logprobs", probe)[0]
        healthy.append(loop.step(3))
        after_step_3 = loop.roles.policy.call("logprobs", probe)[0]
        poisoned = loop.step(4)
        restored = loop.roles.policy.call("logprobs", probe)[0]
        actor_lr = loop.roles.policy.call("lr")[0]
        engine_synced = engine_agrees_with_policy(loop, probe)
        checkpoints = loop.checkpoint_steps()
    finally:
        loop.shutdown()
    # Sampling at 0.7 is the control for the collapse test below: no alarm of any kind on healthy steps.
    assert [result.alarms for result in healthy] == [[], [], []]
    assert not torch.equal(after_step_3, at_checkpoint)  # step 3 moved the policy past the checkpoint
    nan_alarms = {(a.monitor, a.metric, a.action) for a in poisoned.alarms}
    assert ("instability", "loss", "rollback") in nan_alarms
    assert poisoned.metrics["action"] == "rollback" and poisoned.metrics["rolled_back_to"] == 2
    assert torch.equal(restored, at_checkpoint)
    assert loop.policy_lr == actor_lr == pytest.approx(2e-4 * cfg.ppo.monitor.rollback_lr_factor, rel=1e-12)
    assert engine_synced  # the rollout engines sample from the restored weights too
    assert loop.engine_version == 4  # so step 5's batch counts as on-policy: staleness 0, not 5 - 1 - 2
    # The state after the rollback is saved as step 4 once run() has logged it: a resume continues from there.
    assert checkpoints == [2] and poisoned.checkpoint
    assert loop.monitor.last_healthy_step == 2


def engine_agrees_with_policy(loop: PPOLoop, probe: TokenBatch) -> bool:
    """The first vLLM engine and the policy give the probe response the same log-probs (temperature 1)."""
    start = int(probe.action_mask[0].nonzero()[0]) + 1
    ids = probe.input_ids[0].tolist()
    engine = torch.tensor(loop.roles.rollout.call_rank0("sequence_logprobs", ids[:start], ids[start:]))
    policy = loop.roles.policy.call("raw_logprobs", probe)[0][0, start - 1:]
    return torch.allclose(engine, policy, atol=1e-4)


# ---- mode collapse: greedy sampling ----------------------------------------------------------------------
# Slow: the mode-collapse rule is unit-tested on identical and diverse responses (tests/unit/test_monitors.py), and
# the NaN rollback test in this file runs the monitors inside a real run by default.
@pytest.mark.slow
def test_greedy_sampling_trips_the_mode_collapse_alarm_and_raises_kl(ray_session, tmp_path):
    cfg = load_config(TINY_CPU, [f"run.output_root={tmp_path}", *SHORT, "ppo.steps=2", "ppo.rollout.temperature=0"])
    result = run(cfg)
    rows = read_jsonl(result.output_dir / "metrics.jsonl")
    collapse = [a for a in alarms_of(result.output_dir) if a["monitor"] == "mode_collapse"]
    # Both answers to each prompt are the same text: similarity 1 against the 0.9 threshold.
    assert rows[0]["health/pairwise_similarity"] == 1.0
    assert ("pairwise_similarity", 1, "raise_kl") in {(a["metric"], a["step"], a["action"]) for a in collapse}
    assert rows[0]["action"] == "raise_kl"
    assert rows[1]["kl_scale"] == cfg.ppo.monitor.kl_raise_factor
    assert rows[1]["kl_coef"] == pytest.approx(rows[0]["kl_coef"] * cfg.ppo.monitor.kl_raise_factor, rel=1e-9)
    report = json.loads((result.output_dir / "report.json").read_text())
    assert report["actions"][0]["action"] == "raise_kl" and "mode_collapse:pairwise_similarity" in \
        report["actions"][0]["alarms"]
    assert len(report["samples"]["before"]) == len(report["samples"]["after"]) == len(cfg.ppo.report_prompts)
    assert "## Alarms" in (result.output_dir / "report.md").read_text()


# ---- reward hacking: a reward that pays for filler words -------------------------------------------------
# The 'filler' reward source pays for every 'very', 'so' and 'really'; the monitor watches the same words.
# 20 steps of 32 rollouts at seed 7, the SPEC's scheduled KL controller.
HACKABLE = ["ppo.steps=20", "ppo.rollout_batch_size=32", "ppo.mini_batch_size=16", "ppo.ppo_epochs=2",
            "ppo.lr=2e-4", "ppo.value_lr=1e-4", "ppo.max_prompts=256", "ppo.save_every=100", "ppo.export=false",
            "ppo.rollout.max_new_tokens=24", "ppo.rollout.max_prompt_tokens=96", "run.seed=7",
            "ppo.reward.rm_source=filler", "ppo.reward.rm_filler_phrases=[very, so, really]",
            "ppo.monitor.filler_phrases=[very, so, really]"]
RM_ONLY = "ppo.reward.enabled_terms=[rm]"
FILLER = "health/filler_density"


def hackable_run(tmp_path_factory, name: str, *overrides: str):
    folder = tmp_path_factory.mktemp(name)
    result = run(load_config(TINY_CPU, [f"run.output_root={folder}", *HACKABLE, *overrides]))
    return result, read_jsonl(result.output_dir / "metrics.jsonl")


@pytest.fixture(scope="module")
def rm_only(ray_session, tmp_path_factory):
    return hackable_run(tmp_path_factory, "rm_only", RM_ONLY, "ppo.monitor.enabled=false")


@pytest.fixture(scope="module")
def rm_only_stopped(ray_session, tmp_path_factory):
    return hackable_run(tmp_path_factory, "stopped", RM_ONLY, "ppo.monitor.hacking_action=stop",
                        "ppo.monitor.hacking_window=5")


@pytest.fixture(scope="module")
def mixed(ray_session, tmp_path_factory):
    return hackable_run(tmp_path_factory, "mixed", "ppo.monitor.enabled=false")


def last_mean(rows, key, n: int = 5) -> float:
    return statistics.fmean(row[key] for row in rows[-n:])


@pytest.mark.slow
def test_filler_reward_is_hacked_without_the_monitor(rm_only):
    _, rows = rm_only
    # Measured at seed 7: filler density 0.013 → ~0.15 (last 5 steps) while the score rises ~0.16 → ~1.8.
    assert len(rows) == 20
    assert last_mean(rows, FILLER) > rows[0][FILLER] + 0.08
    assert last_mean(rows, "reward/rm_mean") > rows[0]["reward/rm_mean"] + 1.0


@pytest.mark.slow
def test_hacking_monitor_fires_and_its_stop_changes_the_outcome(rm_only, rm_only_stopped):
    (_, free), (stopped_result, stopped) = rm_only, rm_only_stopped
    hacking = [a for a in alarms_of(stopped_result.output_dir) if a["monitor"] == "reward_hacking"]
    assert hacking and hacking[0]["metric"] == "filler_density" and hacking[0]["action"] == "stop"
    assert len(stopped) == hacking[0]["step"] < 20 and stopped[-1]["action"] == "stop"
    # The same seeded run up to the alarm; the stopped policy ends far less hacked than the free one.
    assert [r["reward/rm_mean"] for r in stopped] == [r["reward/rm_mean"] for r in free[:len(stopped)]]
    assert stopped[-1][FILLER] < 0.6 * last_mean(free, FILLER)
    report = json.loads((stopped_result.output_dir / "report.json").read_text())
    assert report["stopped_early"] and report["actions"][-1]["effect"] == "run stopped"


@pytest.mark.slow
def test_mixed_reward_hacks_less_than_the_reward_model_alone(rm_only, mixed):
    (_, alone), (_, mix) = rm_only, mixed
    start = alone[0][FILLER]
    assert mix[0][FILLER] == start  # same seed, same starting policy: the same first rollouts
    reduction = 1 - (last_mean(mix, FILLER) - start) / (last_mean(alone, FILLER) - start)
    # Measured at seed 7: filler density rise 0.141 alone vs 0.075 mixed, 47% less hacking.
    assert reduction > 0.25, reduction
