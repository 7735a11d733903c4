"""The PPO run report, written at the end of every run into <output>/ppo/: report.md, report.json and
report_rewards.png / report_kl.png / report_health.png.

It shows what each reward term did, the measured KL against the controller's (scheduled) coefficient,
entropy, response lengths and diversity, every alarm the monitors raised and the action taken, and greedy
answers to fixed prompts (ppo.report_prompts) from the rollout engine before the first update and after
the last one. Everything is read back from files in the output folder (metrics.jsonl, alarms.jsonl,
answers_before.json, answers_after.json), so a resumed or restarted run reports its whole history.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.config import Config
from common.durable import write_atomically
from jobs.plots import save_figure, stacked_panels

# Metrics summarised as first-window vs last-window means (absent ones are skipped).
HEADLINE = ("reward/rm_mean", "reward/total", "kl", "kl_k3", "kl_coef", "policy/entropy", "response_chars_mean",
            "response_tokens_mean", "health/distinct_1", "health/distinct_2", "health/pairwise_similarity",
            "health/filler_density")
SCHEDULED_COEF = "kl_coef_scheduled"


@dataclass(frozen=True)
class Panel:
    """One subplot: series on the left axis and, on their own scale, on the right axis."""

    title: str
    left: tuple[str, ...]
    right: tuple[str, ...] = ()


# ---- answers before and after ----------------------------------------------------------------------------
def write_answers(output_dir: Path, stage: str, prompts: list[str], answers: list[str]) -> None:
    """Keep one stage's ("before" / "after") greedy answers for the report."""
    write_atomic(Path(output_dir) / f"answers_{stage}.json",
                 json.dumps({"prompts": prompts, "answers": answers}, indent=2, ensure_ascii=False))


def read_answers(output_dir: Path, stage: str, prompts: list[str]) -> list[str] | None:
    """A stage's answers, or None when they were not recorded for these prompts (e.g. a run resumed from a
    folder written before answers were kept, or whose prompts changed since)."""
    path = Path(output_dir) / f"answers_{stage}.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["answers"] if saved["prompts"] == prompts else None


# ---- pure summaries --------------------------------------------------------------------------------------
def window_mean(rows: Sequence[dict], key: str, last: bool, n: int) -> float | None:
    """Mean of the finite values of `key` over the first (or last) `n` rows that carry it; None if none do."""
    values = [row[key] for row in rows if _is_finite(row.get(key))]
    chosen = values[-n:] if last else values[:n]
    return statistics.fmean(chosen) if chosen else None


def summary_window(steps: int) -> int:
    """Steps averaged at each end: a quarter of the run, between 1 and 5."""
    return max(1, min(5, steps // 4))


def reward_terms(rows: Sequence[dict]) -> list[str]:
    """The reward terms logged in `rows` (reward/<term>_weighted keys), in first-seen order."""
    terms: list[str] = []
    for row in rows:
        for key in row:
            term = _weighted_term(key)
            if term and term not in terms:
                terms.append(term)
    return terms


def _weighted_term(key: str) -> str | None:
    prefix, suffix = "reward/", "_weighted"
    return key[len(prefix):-len(suffix)] if key.startswith(prefix) and key.endswith(suffix) else None


def with_scheduled_coef(rows: Sequence[dict]) -> list[dict]:
    """Rows plus the controller's own coefficient (kl_coef before the monitors' raise_kl scaling)."""
    out = []
    for row in rows:
        extra = {}
        if _is_finite(row.get("kl_coef")) and _is_finite(row.get("kl_scale")) and row["kl_scale"]:
            extra[SCHEDULED_COEF] = row["kl_coef"] / row["kl_scale"]
        out.append({**row, **extra})
    return out


def latest_alarms(alarms: Sequence[dict], last_step: int) -> list[dict]:
    """Alarms up to the last logged step; a resumed run re-raises those after its checkpoint, so the latest
    record of each (step, monitor, metric) wins."""
    kept: dict[tuple, dict] = {}
    for alarm in alarms:
        if alarm["step"] <= last_step:
            kept[(alarm["step"], alarm["monitor"], alarm["metric"])] = alarm
    return sorted(kept.values(), key=lambda a: a["step"])


def actions_taken(rows: Sequence[dict], alarms: Sequence[dict], kl_raise_factor: float,
                  rollback_lr_factor: float) -> list[dict]:
    """One entry per step whose alarms led to an action: what triggered it and what it changed."""
    triggers: dict[int, list[str]] = {}
    for alarm in alarms:
        triggers.setdefault(alarm["step"], []).append(f"{alarm['monitor']}:{alarm['metric']}")
    taken = []
    for row in rows:
        action = row.get("action", "none")
        if action == "none":
            continue
        taken.append({"step": row["step"], "action": action, "alarms": triggers.get(row["step"], []),
                      "effect": action_effect(row, kl_raise_factor, rollback_lr_factor)})
    return taken


def action_effect(row: dict, kl_raise_factor: float, rollback_lr_factor: float) -> str:
    action = row["action"]
    if action == "raise_kl":
        scale = row.get("kl_scale", 1.0)
        return f"KL coefficient scale {scale:.3g} → {scale * kl_raise_factor:.3g}"
    if action == "rollback":
        if "rolled_back_to" not in row:
            return "no healthy checkpoint to restore yet: nothing changed"
        return (f"restored the checkpoint of step {row['rolled_back_to']}, policy lr {row['lr']:.3g} → "
                f"{row['lr'] * rollback_lr_factor:.3g}")
    if action == "stop":
        return "run stopped"
    return "logged only"


# ---- plots -----------------------------------------------------------------------------------------------
def report_panels(rows: Sequence[dict]) -> dict[str, list[Panel]]:
    """The panels of each report figure (report_<name>.png); panels without data are dropped when drawn."""
    rewards = [Panel(f"reward term: {term}", (f"reward/{term}",), (f"reward/{term}_weighted",))
               for term in reward_terms(rows)]
    rewards.append(Panel("mixed reward", ("reward/total", "reward/terminal")))
    return {
        "rewards": rewards,
        "kl": [Panel("KL per sequence vs coefficient", ("kl", "kl_k3"), ("kl_coef", SCHEDULED_COEF))],
        "health": [
            Panel("policy entropy (nats/token)", ("policy/entropy",)),
            Panel("response length", ("response_chars_mean",), ("response_tokens_mean",)),
            Panel("diversity", ("health/distinct_1", "health/distinct_2", "health/pairwise_similarity")),
            Panel("filler/jargon density", ("health/filler_density",)),
        ],
    }


def plot_panels(rows: Sequence[dict], panels: Sequence[Panel], path: Path, title: str,
                marks: Sequence[int] = ()) -> Path | None:
    """A PNG with one subplot per panel that has data; `marks` are steps drawn as dotted red lines (alarms)."""
    panels = [p for p in panels if any(_series(rows, key) for key in p.left + p.right)]
    if not panels:
        return None
    fig, axes = stacked_panels(len(panels), 7.5, 2.8, twin_axes=any(panel.right for panel in panels))
    for ax, panel in zip(axes[:, 0], panels):
        lines = _draw(ax, rows, panel.left, "-", first_color=0)
        if any(_series(rows, key) for key in panel.right):
            lines += _draw(ax.twinx(), rows, panel.right, "--", first_color=len(panel.left))
        for step in marks:
            ax.axvline(step, color="red", alpha=0.35, linestyle=":")
        ax.legend(handles=lines, fontsize=7, loc="best")
        ax.set_title(panel.title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    return save_figure(fig, path, lay_out=False)


def _draw(ax, rows: Sequence[dict], keys: Sequence[str], style: str, first_color: int) -> list:
    """Plot each key that has data; colours continue across a panel's two axes so every line is told apart."""
    lines = []
    for i, key in enumerate(keys, first_color):
        points = _series(rows, key)
        if points:
            lines += ax.plot([p[0] for p in points], [p[1] for p in points], style, color=f"C{i}", label=key,
                             marker="." if len(points) < 50 else None)
    return lines


def _series(rows: Sequence[dict], key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in rows if _is_finite(row.get(key))]


# ---- the report ------------------------------------------------------------------------------------------
def build_report(cfg: Config, rows: Sequence[dict], alarms: Sequence[dict], answers: dict,
                 plots: Sequence[str]) -> dict:
    """report.json's content (pure: everything comes in as arguments)."""
    last_step = rows[-1]["step"] if rows else 0
    alarms = latest_alarms(alarms, last_step)
    n = summary_window(len(rows))
    keys = [*HEADLINE, *(f"reward/{t}" for t in reward_terms(rows))]
    summary = {key: {"first": window_mean(rows, key, False, n), "last": window_mean(rows, key, True, n)}
               for key in dict.fromkeys(keys)}
    summary = {key: ends for key, ends in summary.items() if ends["first"] is not None}
    mon = cfg.ppo.monitor
    return {
        "run": cfg.run.name, "steps": last_step, "planned_steps": cfg.ppo.steps,
        "stopped_early": bool(rows) and rows[-1].get("action") == "stop",
        "reward_terms": list(cfg.ppo.reward.enabled_terms), "rm_source": cfg.ppo.reward.rm_source,
        "advantage_estimator": cfg.ppo.advantage_estimator, "value_model": cfg.ppo.uses_value_model,
        "samples_per_prompt": cfg.ppo.samples_per_prompt,
        "summary_window": n, "summary": summary, "final_metrics": rows[-1] if rows else {},
        "alarms": alarms, "actions": actions_taken(rows, alarms, mon.kl_raise_factor, mon.rollback_lr_factor),
        "samples": {"prompts": list(cfg.ppo.report_prompts), **answers},
        "plots": list(plots),
    }


def render_markdown(report: dict) -> str:
    n = report["summary_window"]
    stopped = " (stopped early by a monitor)" if report["stopped_early"] else ""
    answers = report["samples_per_prompt"]
    critic = "with a value model" if report["value_model"] else "no value model"
    lines = [f"# PPO run report: {report['run']}", "",
             f"{report['steps']} of {report['planned_steps']} steps{stopped}; reward terms "
             f"{', '.join(report['reward_terms'])}; preference score from `{report['rm_source']}`; advantages "
             f"from `{report['advantage_estimator']}` ({critic}, {answers} answer{'s' if answers > 1 else ''} "
             f"per prompt).", ""]
    steps = f"{n} step" if n == 1 else f"{n} steps"
    lines += markdown_table(["metric", f"first {steps}", f"last {steps}"],
                            [[key, v["first"], v["last"]] for key, v in report["summary"].items()])
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    alarm_fields = ("step", "monitor", "metric", "value", "threshold", "action", "message")
    lines += ["", f"## Alarms ({len(report['alarms'])})", ""]
    lines += markdown_table(alarm_fields, [[a[k] for k in alarm_fields] for a in report["alarms"]],
                            empty="None: every step passed the training-health checks.")
    lines += ["", "## Actions taken", ""]
    lines += markdown_table(["step", "action", "triggered by", "effect"],
                            [[a["step"], a["action"], ", ".join(a["alarms"]), a["effect"]] for a in report["actions"]],
                            empty="None.")
    samples = report["samples"]
    if samples["prompts"]:
        missing = ["(not recorded)"] * len(samples["prompts"])
        lines += ["", "## Answers before and after training (greedy, rollout engine)", ""]
        lines += markdown_table(["prompt", "before (step 0)", "after"],
                                zip(samples["prompts"], samples["before"] or missing, samples["after"] or missing))
    return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], rows, empty: str | None = None) -> list[str]:
    """Lines of a Markdown table (cells formatted by format_value, pipes and newlines escaped); `empty`, when
    given, replaces a table without rows."""
    rows = [list(row) for row in rows]
    if not rows and empty is not None:
        return [empty]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(format_value(value)) for value in row) + " |" for row in rows]


def write_report(cfg: Config, output_dir: Path) -> Path:
    """Plots, report.json and report.md in output_dir, each written to a temp path and renamed."""
    from common.metrics import read_jsonl

    output_dir = Path(output_dir)
    rows = with_scheduled_coef(read_jsonl(output_dir / "metrics.jsonl"))
    alarms = read_jsonl(output_dir / "alarms.jsonl")
    marks = [row["step"] for row in rows if row.get("action", "none") != "none"]
    plots = [f"report_{name}.png" for name, panels in report_panels(rows).items()
             if plot_panels(rows, panels, output_dir / f"report_{name}.png", f"PPO {cfg.run.name}: {name}", marks)]
    prompts = list(cfg.ppo.report_prompts)
    answers = {stage: read_answers(output_dir, stage, prompts) for stage in ("before", "after")}
    report = build_report(cfg, rows, alarms, answers, plots)
    write_atomic(output_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False, default=str))
    write_atomic(output_dir / "report.md", render_markdown(report))
    return output_dir / "report.md"


def write_atomic(path: Path, text: str) -> None:
    write_atomically(path, text)  # synced to disk before and after the rename (common/durable.py)


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_value(value) -> str:
    """A table cell: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
