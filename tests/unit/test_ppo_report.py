"""The PPO run report (jobs/ppo_report.py) on hand-built metrics and alarms: summaries, actions, Markdown and
the files it writes."""

from __future__ import annotations

import json

import pytest

from common.config import load_config
from jobs.ppo_report import (
    action_effect,
    actions_taken,
    build_report,
    latest_alarms,
    markdown_table,
    read_answers,
    render_markdown,
    reward_terms,
    summary_window,
    window_mean,
    with_scheduled_coef,
    write_answers,
    write_report,
)

CFG = load_config(None, ["run.name=unit", "ppo.steps=4", "ppo.report_prompts=[Say hi., 'A | B?']"])


def rows_of(n: int = 4) -> list[dict]:
    """A 4-step run: raise_kl at step 2, a rollback to step 2 at step 4 (lr 1e-4)."""
    rows = []
    for step in range(1, n + 1):
        rows.append({"step": step, "reward/rm_mean": 0.1 * step, "reward/total": 0.05 * step,
                     "reward/rm": 0.1 * step, "reward/rm_weighted": 0.06 * step, "reward/kl": -0.5,
                     "reward/kl_weighted": -0.5, "kl": 1.0 * step, "kl_coef": 0.05 if step < 3 else 0.075,
                     "kl_scale": 1.0 if step < 3 else 1.5, "policy/entropy": 1.2, "response_chars_mean": 40.0 + step,
                     "lr": 1e-4, "action": {2: "raise_kl", 4: "rollback"}.get(step, "none")})
    rows[-1]["rolled_back_to"] = 2
    rows[-1]["policy/loss"] = float("nan")
    return rows


ALARMS = [
    {"step": 2, "monitor": "mode_collapse", "metric": "distinct_2", "value": 0.1, "threshold": 0.2,
     "action": "raise_kl", "message": "mode collapse: distinct_2 0.1 is below 0.2"},
    {"step": 4, "monitor": "instability", "metric": "loss", "value": float("nan"), "threshold": float("inf"),
     "action": "rollback", "message": "loss is nan at step 4"},
]


def test_window_mean_skips_missing_and_non_finite_values():
    rows = [{"x": 1.0}, {"y": 5.0}, {"x": float("nan")}, {"x": 3.0}, {"x": 5.0}]
    assert window_mean(rows, "x", last=False, n=2) == pytest.approx(2.0, rel=1e-12)
    assert window_mean(rows, "x", last=True, n=2) == pytest.approx(4.0, rel=1e-12)
    assert window_mean(rows, "absent", last=True, n=2) is None


def test_summary_window_is_a_quarter_of_the_run_between_1_and_5():
    assert [summary_window(n) for n in (1, 3, 8, 20, 200)] == [1, 1, 2, 5, 5]


def test_reward_terms_in_logged_order():
    assert reward_terms(rows_of()) == ["rm", "kl"]


def test_scheduled_coefficient_undoes_the_monitor_scaling():
    rows = with_scheduled_coef(rows_of())
    assert [r["kl_coef_scheduled"] for r in rows] == pytest.approx([0.05] * 4, rel=1e-12)


def test_latest_alarms_keep_one_record_per_step_monitor_and_metric():
    replayed = {**ALARMS[0], "value": 0.05}  # a resumed run raised it again
    late = {**ALARMS[0], "step": 9}
    assert latest_alarms([ALARMS[0], replayed, ALARMS[1], late], last_step=4) == [replayed, ALARMS[1]]


def test_actions_name_their_alarms_and_effects():
    taken = actions_taken(rows_of(), ALARMS, kl_raise_factor=1.5, rollback_lr_factor=0.5)
    assert [(a["step"], a["action"], a["alarms"]) for a in taken] == [
        (2, "raise_kl", ["mode_collapse:distinct_2"]), (4, "rollback", ["instability:loss"])]
    assert taken[0]["effect"] == "KL coefficient scale 1 → 1.5"
    assert taken[1]["effect"] == "restored the checkpoint of step 2, policy lr 0.0001 → 5e-05"


def test_rollback_without_a_healthy_checkpoint_and_stop_effects():
    assert action_effect({"action": "rollback", "lr": 1e-4}, 1.5, 0.5).startswith("no healthy checkpoint")
    assert action_effect({"action": "stop"}, 1.5, 0.5) == "run stopped"


def test_markdown_table_escapes_cells_and_formats_numbers():
    assert markdown_table(["a", "b"], [["x|y", 0.123456], ["two\nlines", None]]) == [
        "| a | b |", "|---|---|", "| x\\|y | 0.1235 |", "| two lines | – |"]
    assert markdown_table(["a"], [], empty="nothing") == ["nothing"]


def test_report_content_and_markdown():
    rows = with_scheduled_coef(rows_of())
    answers = {"before": ["hello", "b"], "after": None}
    report = build_report(CFG, rows, ALARMS, answers, ["report_kl.png"])
    assert report["steps"] == 4 and report["planned_steps"] == 4 and not report["stopped_early"]
    assert report["summary"]["reward/rm_mean"] == pytest.approx({"first": 0.1, "last": 0.4}, rel=1e-12)
    assert "reward/repetition" not in report["summary"]
    text = render_markdown(report)
    assert "| 4 | instability | loss | nan | inf | rollback | loss is nan at step 4 |" in text
    assert "| 4 | rollback | instability:loss | restored the checkpoint of step 2" in text
    assert "| A \\| B? | b | (not recorded) |" in text
    assert "![report_kl.png](report_kl.png)" in text
    assert "advantages from `gae` (with a value model, 1 answer per prompt)." in text
    grpo = load_config(None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "ppo.rollout_batch_size=8"])
    assert "advantages from `grpo` (no value model, 4 answers per prompt)." in render_markdown(
        build_report(grpo, rows, ALARMS, answers, []))


def test_answers_are_read_back_only_for_the_same_prompts(tmp_path):
    write_answers(tmp_path, "before", ["p1"], ["a1"])
    assert read_answers(tmp_path, "before", ["p1"]) == ["a1"]
    assert read_answers(tmp_path, "before", ["other"]) is None
    assert read_answers(tmp_path, "after", ["p1"]) is None


def test_write_report_writes_every_file_atomically(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_of()))
    (tmp_path / "alarms.jsonl").write_text("".join(json.dumps(a) + "\n" for a in ALARMS))
    write_answers(tmp_path, "before", list(CFG.ppo.report_prompts), ["x", "y"])
    write_answers(tmp_path, "after", list(CFG.ppo.report_prompts), ["x2", "y2"])
    path = write_report(CFG, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["plots"] == ["report_rewards.png", "report_kl.png", "report_health.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in report["plots"])
    assert report["samples"] == {"prompts": ["Say hi.", "A | B?"], "before": ["x", "y"], "after": ["x2", "y2"]}
    assert "| Say hi. | x | x2 |" in path.read_text()
    assert not list(tmp_path.glob("*.tmp*"))
