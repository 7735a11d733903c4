"""PPO with every model in its own Ray actors: vLLM rollouts, DeepSpeed ZeRO policy and value, a frozen
reference, and a reward model (actor, HTTP service or programmatic score).

    python -m jobs.ppo --config configs/tiny-cpu.yaml [section.key=value ...]

Outputs in <run.output_root>/<run.name>/ppo/: metrics.jsonl/.csv, tensorboard/, ppo.png, alarms.jsonl,
roles.json (which node and process holds each role; see `python -m jobs.status`), faults.jsonl (replaced
engines, restarts), checkpoints/ (re-running the same command resumes from the latest) and the final policy
in model/. SIGTERM ends the run after the current step with a checkpoint (exit status 143). The run report,
report.md + report.json + report_*.png (reward terms, KL vs its coefficient, entropy, lengths, alarms and
actions, greedy answers before and after training), is written at the end.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from common.config import Config
from jobs import cli

log = logging.getLogger("rayalign.ppo")
SECTIONS = ("run", "ray", "model", "lora", "deepspeed", "ppo")
PLOTTED = ["reward/rm_mean", "reward/total", "kl", "kl_coef", "policy/loss", "value/loss", "policy/entropy",
           "response_tokens_mean", "advantage/zero_spread_groups", "eval/rm_mean"]  # absent keys are skipped


@dataclass(frozen=True)
class PPOResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    final_metrics: dict


def run(cfg: Config) -> PPOResult:
    cfg.check_stage("ppo")
    output_dir = cfg.run.output_dir("ppo")
    output_dir.mkdir(parents=True, exist_ok=True)
    # The driver's own imports (the PPO loop's torch, the tokenizer classes) load while Ray starts.
    imports = cli.import_in_background("actors.ppo_supervisor", "transformers.models.auto.tokenization_auto")
    from cluster import runtime

    cluster = runtime.start(cfg.ray)
    imports.join()
    from actors.ppo_supervisor import run_supervised
    from common.metrics import read_jsonl
    from jobs.plots import plot_curves
    from jobs.ppo_report import write_answers, write_report

    # Dead engines are replaced, dead training ranks resume from the last checkpoint, SIGTERM checkpoints.
    loop, final, model_dir = run_supervised(cfg, output_dir, functools.partial(write_answers, output_dir))
    with cli.cluster_winding_down(cluster):  # the figures and the report read only files
        plot_curves(read_jsonl(output_dir / "metrics.jsonl"), PLOTTED, output_dir / "ppo.png", f"PPO {cfg.run.name}")
        write_report(cfg, output_dir)
    log.info("PPO done at step %d: rm %.3f, kl %.3f; model: %s", loop.step_index,
             final.get("reward/rm_mean", float("nan")), final.get("kl", float("nan")), model_dir)
    return PPOResult(output_dir, Path(model_dir) if model_dir else None, loop.step_index, final)


def main(argv: list[str] | None = None) -> PPOResult:
    cfg, _ = cli.parse("python -m jobs.ppo", __doc__.split("\n\n")[0], SECTIONS, argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.ppo", main))
