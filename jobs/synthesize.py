"""Synthetic SFT candidates from an LLM, on Ray Data (the seed's "a strong model generates 100k candidates").

    python -m jobs.synthesize --config configs/synth-tiny.yaml [section.key=value ...]
    python -m jobs.synthesize synth.generator=http synth.endpoint=http://host:8000/v1 synth.token_file=KEY
    ray job submit --working-dir . -- python -m jobs.synthesize --config configs/synth-tiny.yaml

Each candidate is made in two generations: a new task written after a few seed tasks (synth.seed_tasks,
sampled per candidate), then the answer to that task. The generator is a pool of rayalign's vLLM engines on the
cluster (synth.generator=engine, synth.engines actors) or any OpenAI-compatible chat-completions endpoint
(synth.generator=http: concurrency, timeouts, retries with backoff, key from synth.token_file or
$RAYALIGN_SYNTH_TOKEN). An endpoint that is down or refuses the key fails the job before any generation.
A generation that fails or comes back empty is retried from a fresh seed, then counted and listed, never kept.
Every record says where it came from (generator, template hash, seed, the seed tasks it was shown).
Outputs in <run.output_root>/<run.name>/synthesize/: candidates.jsonl (jobs.records schema; feed it to
jobs.curate, or run both with jobs.funnel), failures.jsonl, report.json, report.md. Batches already generated
(<run>/synthesize-shards/) are not generated again when the same command runs again, except those where a request
failed, which are generated again (an endpoint that was down for a while costs a re-run, not the candidates).
"""

from __future__ import annotations

import sys

from jobs import cli
from jobs.synthesis.run import SynthResult, run

SECTIONS = ("run", "ray", "model", "synth")


def main(argv: list[str] | None = None) -> SynthResult:
    from cluster import runtime

    cfg, _ = cli.parse("python -m jobs.synthesize", __doc__, SECTIONS, argv)
    try:
        result = run(cfg)
    finally:
        runtime.stop()
    counts, speed = result.report["counts"], result.report["throughput"]
    print(f"generated {counts['generated']} of {counts['requested']} candidates with {result.report['generator']} "
          f"(failed {counts['failed']}, retried {counts['retried']}, {counts['transport_retries']} requests re-sent; "
          f"{speed['candidates_per_s'] or 0} candidates/s this run) → {result.candidates_file}")
    return result


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.synthesize", main))
