"""Reward-term ablation (SPEC §4: start with one reward, add terms one by one, test each): the same seeded PPO
run repeated with the mixed reward's terms switched on one at a time, compared in one table and one plot.

    python -m jobs.ppo_ablation --config configs/tiny-cpu.yaml [--order rm,kl,length,repetition,safety]
                                [--runs rm,rm+kl,rm+length] [--normalizations none,batch] [--window N]
                                [section.key=value ...]

Every run is jobs.ppo.run on the same config (seed included) except ppo.reward.enabled_terms (and, with
--normalizations, ppo.reward.term_normalization: each set of terms summed as is and normalised then summed). Its
outputs (metrics, run report, checkpoints) go to <run.output_root>/<run.name>/ablation/<label>/ppo/, so re-running
the command resumes each run where it stopped; all runs share one Ray cluster. The comparison (means over
each run's last steps of the reward terms, KL, response length, distinct-n, filler density and entropy)
goes to <run.output_root>/<run.name>/ablation/: ablation.md, ablation.csv and ablation.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.config import Config, RewardMixConfig, with_overrides
from common.errors import ConfigError
from jobs import cli
from jobs.plots import save_figure, stacked_panels
from jobs.ppo import SECTIONS, run
from jobs.ppo_report import latest_alarms, markdown_table, summary_window, window_mean, write_atomic

log = logging.getLogger("rayalign.ablation")
DEFAULT_ORDER = ("rm", "kl", "length", "repetition", "safety")
NORMALIZATIONS = typing.get_args(typing.get_type_hints(RewardMixConfig)["term_normalization"])
# (column, metrics key): what the table compares, each as a mean over the last `window` steps of a run.
COMPARED = (
    ("rm score", "reward/rm_mean"), ("total reward", "reward/total"),
    *((f"{term} term", f"reward/{term}") for term in DEFAULT_ORDER if term != "rm"),
    ("KL (k3)", "kl_k3"), ("chars", "response_chars_mean"), ("distinct-1", "health/distinct_1"),
    ("distinct-2", "health/distinct_2"), ("filler density", "health/filler_density"), ("entropy", "policy/entropy"),
)
LINE_STYLES = ("-", "--", ":", "-.")
PLOTTED = ("reward/rm_mean", "reward/total", "kl_k3", "response_chars_mean", "health/distinct_2",
           "health/filler_density")


@dataclass(frozen=True)
class AblationResult:
    folder: Path
    summaries: list[dict]


# ---- which runs ------------------------------------------------------------------------------------------
def cumulative_runs(order: Sequence[str]) -> list[tuple[str, ...]]:
    """The terms of `order` added one at a time: (a,), (a, b), (a, b, c), ..."""
    return [tuple(order[:i]) for i in range(1, len(order) + 1)]


def parse_order(text: str) -> list[str]:
    """'rm,kl,length' → ['rm', 'kl', 'length']."""
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_runs(text: str) -> list[tuple[str, ...]]:
    """'rm,rm+kl,rm+length' → [('rm',), ('rm', 'kl'), ('rm', 'length')]."""
    return [tuple(term.strip() for term in run.split("+") if term.strip()) for run in parse_order(text)]


def check_runs(runs: Sequence[tuple[str, ...]]) -> None:
    """ConfigError naming the run and term when a run is empty, names an unknown term or a term twice, or
    two runs are the same."""
    from actors.algo.rewards import REWARD_TERMS

    if not runs:
        raise ConfigError("the ablation needs at least one run")
    for terms in runs:
        label = run_label(terms) or "(empty)"
        if not terms:
            raise ConfigError(f"ablation run {label} has no reward terms")
        unknown = [t for t in terms if t not in REWARD_TERMS]
        if unknown:
            raise ConfigError(f"ablation run {label}: unknown reward term {unknown[0]!r}; known: "
                              f"{', '.join(REWARD_TERMS.names())}")
        if len(set(terms)) != len(terms):
            raise ConfigError(f"ablation run {label} names a term twice")
    labels = [run_label(terms) for terms in runs]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"ablation runs repeat {', '.join(repeated)}")


def run_label(terms: Sequence[str], normalization: str | None = None) -> str:
    """'rm+kl', or 'rm+kl@batch' for a run under ppo.reward.term_normalization=batch."""
    return "+".join(terms) + (f"@{normalization}" if normalization else "")


def parse_normalizations(text: str | None, cfg: Config) -> list[str | None]:
    """'none,batch' → ['none', 'batch']; no option → [None] (the config's own setting, unlabelled)."""
    if not text:
        return [None]
    names = parse_order(text)
    for name in names:
        if name not in NORMALIZATIONS:
            raise ConfigError(f"--normalizations: unknown term normalization {name!r}; known: "
                              f"{', '.join(NORMALIZATIONS)}")
    if "group" in names and cfg.ppo.samples_per_prompt < 2:
        raise ConfigError("--normalizations: group normalises over the answers to each prompt: set "
                          "ppo.samples_per_prompt to 2 or more")
    if len(set(names)) != len(names):
        raise ConfigError(f"--normalizations names one twice: {text}")
    return names


def run_config(cfg: Config, terms: Sequence[str], folder: Path, normalization: str | None = None) -> Config:
    """`cfg` with only the reward terms (and the term normalization, when given) changed, writing to
    <folder>/<label>/ppo/."""
    reward = dataclasses.replace(cfg.ppo.reward, enabled_terms=list(terms),
                                 term_normalization=normalization or cfg.ppo.reward.term_normalization)
    name = run_label(terms, normalization)
    return with_overrides(cfg, run=dataclasses.replace(cfg.run, output_root=str(folder), name=name),
                          ppo=dataclasses.replace(cfg.ppo, reward=reward))


# ---- comparison (pure) -----------------------------------------------------------------------------------
def summarize(terms: Sequence[str], rows: Sequence[dict], alarms: int, window: int,
              normalization: str | None = None) -> dict:
    """One table row: the run, its length and alarms, and each compared metric's last-`window` mean."""
    row = {"run": run_label(terms, normalization), "steps": rows[-1]["step"] if rows else 0, "alarms": alarms}
    row.update({column: window_mean(rows, key, True, window) for column, key in COMPARED})
    return row


def table_markdown(summaries: Sequence[dict], window: int) -> str:
    columns = [c for c in summaries[0] if any(s[c] is not None for s in summaries)] if summaries else []
    lines = [f"# Reward-term ablation: means over the last {window} steps of each run", ""]
    lines += markdown_table(columns, [[s[c] for c in columns] for s in summaries])
    return "\n".join(lines) + "\n"


def plot_comparison(rows_by_run: dict[str, list[dict]], path: Path, title: str) -> Path:
    """One panel per PLOTTED metric, one line per run."""
    fig, axes = stacked_panels(len(PLOTTED), 7.5, 2.6)
    for ax, key in zip(axes[:, 0], PLOTTED):
        for i, (label, rows) in enumerate(rows_by_run.items()):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            # Line styles as well as colours: a term that never fires leaves its run on top of the previous one.
            ax.plot([p[0] for p in points], [p[1] for p in points], LINE_STYLES[i % len(LINE_STYLES)], label=label)
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    return save_figure(fig, path, lay_out=False)


# ---- the runs --------------------------------------------------------------------------------------------
def run_ablation(cfg: Config, runs: Sequence[tuple[str, ...]], window: int | None = None,
                 normalizations: Sequence[str | None] = (None,)) -> AblationResult:
    """Each run (under each term normalization) in turn through jobs.ppo.run on one Ray cluster, then the table
    and the plot."""
    from cluster import runtime
    from common.metrics import read_jsonl, write_csv

    check_runs(runs)
    folder = cfg.run.run_dir() / "ablation"
    folder.mkdir(parents=True, exist_ok=True)
    window = window or summary_window(cfg.ppo.steps)
    runtime.start(cfg.ray)
    rows_by_run, summaries = {}, []
    plan = [(terms, normalization) for terms in runs for normalization in normalizations]
    for i, (terms, normalization) in enumerate(plan, 1):
        label = run_label(terms, normalization)
        log.info("ablation run %d of %d: %s", i, len(plan), label)
        result = run(run_config(cfg, terms, folder, normalization))
        rows = read_jsonl(result.output_dir / "metrics.jsonl")
        alarms = latest_alarms(read_jsonl(result.output_dir / "alarms.jsonl"), rows[-1]["step"] if rows else 0)
        rows_by_run[label] = rows
        summaries.append(summarize(terms, rows, len(alarms), window, normalization))
    write_csv(summaries, folder / "ablation.csv")
    write_atomic(folder / "ablation.md", table_markdown(summaries, window) + "\n![ablation](ablation.png)\n")
    plot_comparison(rows_by_run, folder / "ablation.png", f"reward-term ablation: {cfg.run.name}")
    log.info("ablation table: %s", folder / "ablation.md")
    return AblationResult(folder, summaries)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--order", default=",".join(DEFAULT_ORDER), metavar="TERMS",
                        help="reward terms in the order they are added, comma-separated: run 1 has the first, "
                             "run 2 the first two, ... (default: %(default)s, i.e. rm; rm+kl; ...; all five)")
    parser.add_argument("--runs", metavar="RUNS",
                        help="explicit runs instead of --order: comma-separated, terms joined by '+', e.g. "
                             "'rm,rm+kl,rm+kl+length' (a run may leave out any term)")
    parser.add_argument("--normalizations", metavar="NAMES",
                        help="run every set of terms under each of these ppo.reward.term_normalization values, "
                             "comma-separated (none, batch, group), e.g. 'none,batch' compares sum with "
                             "normalise-then-sum; runs are labelled <terms>@<name> (default: the config's own "
                             "setting, one run per set of terms)")
    parser.add_argument("--window", type=int, metavar="N",
                        help="compare the means over each run's last N steps (default: a quarter of ppo.steps, "
                             "between 1 and 5)")


def main(argv: list[str] | None = None) -> AblationResult:
    cfg, args = cli.parse("python -m jobs.ppo_ablation", __doc__, SECTIONS, argv,
                          extend=add_options)
    runs = parse_runs(args.runs) if args.runs else cumulative_runs(parse_order(args.order))
    normalizations = parse_normalizations(args.normalizations, cfg)
    if args.window is not None and args.window < 1:
        raise ConfigError(f"--window must be at least 1, got {args.window}")
    return run_ablation(cfg, runs, args.window, normalizations)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.ppo_ablation", main))
