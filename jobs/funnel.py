"""The seed's synthetic-data funnel as one command: synthesize → quality gates → diversity filter → mix →
30% spot-check sample → reviewers' verdicts → accepted set.

    python -m jobs.funnel --config configs/synth-tiny.yaml [section.key=value ...]
    python -m jobs.funnel --config configs/synth-tiny.yaml curate.review_verdicts=spot_check_done.jsonl

Runs jobs.synthesize (resuming any batches already generated), then jobs.curate over the candidates (category
synth.category) beside any curate.sources, and writes <run.output_root>/<run.name>/funnel/: funnel.md (each
stage's count, the closest dropped pairs, the achieved mix), funnel.json and funnel.png. The curated set and the
spot-check file are jobs.curate's (<run>/curate/); copy them out of that folder (each run replaces it), fill in
verdicts, and run again with curate.review_verdicts=<the copy> to get the accepted set.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from common.config import Config
from jobs import cli

SECTIONS = ("run", "ray", "model", "synth", "curate")


@dataclass(frozen=True)
class FunnelResult:
    output_dir: Path
    stages: list[dict]
    problems: list[str]
    curated_file: Path


def with_candidates(cfg: Config, candidates_file: Path) -> Config:
    """The curation config: the candidates join curate.sources under synth.category."""
    source = {"path": str(candidates_file), "category": cfg.synth.category}
    return replace(cfg, curate=replace(cfg.curate, sources=[*cfg.curate.sources, source]))


def run(cfg: Config) -> FunnelResult:
    from jobs.curation.pipeline import run as curate
    from jobs.curation.rules import build_rules
    from jobs.ppo_report import write_atomic
    from jobs.synthesis.funnel import check_funnel, funnel_stages, plot_funnel, render_markdown
    from jobs.synthesis.run import run as synthesize

    cfg.check_stage("synthesize")
    build_rules(cfg.curate)  # a bad lexicon or verdict file fails before any generation
    synth = synthesize(cfg)
    curated = curate(with_candidates(cfg, synth.candidates_file))
    stages = funnel_stages(synth.report, curated.report, str(synth.candidates_file))
    problems = check_funnel(synth.report, curated.report, str(synth.candidates_file))
    out = cfg.run.output_dir("funnel")
    out.mkdir(parents=True, exist_ok=True)
    plot_funnel(stages, out / "funnel.png")
    write_atomic(out / "funnel.json", json.dumps({"stages": stages, "problems": problems,
                                                  "candidates": str(synth.candidates_file),
                                                  "curated": str(curated.output_dir)}, indent=2))
    write_atomic(out / "funnel.md", render_markdown(cfg.run.name, stages, curated.report, problems))
    return FunnelResult(out, stages, problems, curated.output_dir / "curated.jsonl")


def main(argv: list[str] | None = None) -> FunnelResult:
    from cluster import runtime

    cfg, _ = cli.parse("python -m jobs.funnel", __doc__, SECTIONS, argv)
    try:
        result = run(cfg)
    finally:
        runtime.stop()
    print(" → ".join(f"{s['stage']} {s['count']}" for s in result.stages))
    print(f"funnel report: {result.output_dir / 'funnel.md'}; accepted set: {result.curated_file}")
    return result


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.funnel", main))
