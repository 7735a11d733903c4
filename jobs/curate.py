"""SFT data curation on Ray Data: quality gates, embedding diversity filter, category mix, human review.

    python -m jobs.curate --config configs/curate-tiny.yaml [section.key=value ...]
    ray job submit --working-dir . -- python -m jobs.curate --config configs/curate-tiny.yaml

Reads curate.sources (each {path, category, limit?}), drops records that fail the quality gates
(curate.rules: reviewer verdicts, annotator ratings, response length, unique-token ratio, repeated spans,
harmful-word lexicon, fact check), sends ambiguous ones to a review queue, keeps a record only if its
all-MiniLM-L6-v2 embedding has cosine similarity < curate.max_similarity to every record kept before it,
and samples to the curate.mix ratio. Bad input (a malformed record, a source that cannot be read) is
skipped, counted and listed by file:line in the report; the job fails only when nothing readable is left.
Outputs in <run.output_root>/<run.name>/curate/ (replaced whole, only when the run succeeds):
curated.jsonl + curated.parquet (jobs.records schema, datasets-loadable; `data.train_files` of jobs.sft may
name the folder itself), review_queue.jsonl, spot_check.jsonl, report.json, report.md, lengths.png.
Second pass: fill in "verdict" ("accept" / "reject") in spot_check.jsonl or review_queue.jsonl, copy it
out of the output folder, and rerun with curate.review_verdicts=<that file>.
"""

from __future__ import annotations

import sys

from jobs import cli
from jobs.curation.pipeline import CurationResult, run

SECTIONS = ("run", "ray", "curate")


def main(argv: list[str] | None = None) -> CurationResult:
    from cluster import runtime

    cfg, _ = cli.parse("python -m jobs.curate", __doc__, SECTIONS, argv)
    try:
        result = run(cfg)
    finally:
        runtime.stop()
    acc, bad = result.report["accounting"], result.report["bad_input"]
    print(f"curated {acc['curated']} of {acc['input']} records "
          f"(malformed {acc['malformed']}, unreadable sources {bad['unreadable_sources']}, "
          f"rules dropped {acc['dropped_by_rules']}, review queue {acc['review_queue']}, "
          f"near-duplicates {acc['dropped_by_diversity']}, left out by the mix {acc['left_out_by_mix']}) "
          f"→ {result.output_dir}")
    return result


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.curate", main))
