"""The curation job's Ray Data wiring: read → normalise → quality gates → embed, then on the driver the
greedy diversity filter, the mix, the spot-check sample, and the atomic writing of every output.

Reading, the gates and embedding are Ray Data stages over one block per source: the gates run on an
actor pool (lexicon and knowledge base loaded once per actor), embedding on another (one encoder per
actor), and only records the gates kept are embedded. The greedy filter is sequential by definition
("similar to any record kept *before* it"), so it runs once on the driver over the gathered embeddings,
as blocked matrix products (`finish`, which needs no Ray and is unit-tested on its own).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import Config, CurateConfig, resolve_path
from common.configlib import to_dict
from common.errors import ConfigError, EmptyDatasetError, RecordError
from common.records import read_records, write_parquet
from jobs.curation.dedup import DedupResult, Embedder, greedy_dedup
from jobs.curation.mixing import plan_mix, sample_mix
from jobs.curation.report import (accounting_by_source, annotation_report, pair_entry, plot_lengths,
                                  render_markdown, rule_counts, source_file)
from jobs.curation.review import spot_check_sample
from jobs.curation.rows import SEQ_STRIDE, error_row, record_of, to_row
from jobs.curation.rules import Outcome, build_rules, evaluate

log = logging.getLogger("rayalign.curate")

GATE_BATCH = 256
# Reading, gating and embedding stream side by side, so the encoder loads while sources are still being
# read. Logical CPUs per stage: reading is light and the gates are cheap next to the encoder, so on a
# 2-CPU embedded cluster all three fit at once instead of the encoder waiting for the gates to finish.
READ_CPUS = 0.25
GATE_CPUS = 0.5
EMBED_CPUS = 1.0
GATE_COLUMNS = ("status", "rules", "reasons", "notes")
SUMMARY_COLUMNS = ("id", "seq", "category", "source", "response_chars", "error", "unreadable", "ratings",
                   *GATE_COLUMNS)
# report.json / report.md list at most this many bad-input entries (a broken export can have millions); the
# counts always cover them all.
BAD_INPUT_LISTED = 1000


@dataclass(frozen=True)
class CurationResult:
    output_dir: Path
    report: dict


def run(cfg: Config) -> CurationResult:
    """Curate cfg.curate.sources into <run.output_root>/<run.name>/curate/ (uses or starts Ray)."""
    from cluster import runtime

    cur = cfg.curate
    if not cur.sources:
        raise ConfigError("curate.sources is empty: list the data files, each {path, category, limit?}")
    check_verdicts_outside(cfg)
    rules = build_rules(cur)  # on the driver first: a bad lexicon, knowledge base or verdict file fails here
    runtime.start(cfg.ray)
    quiet_ray_data()
    clock = time.perf_counter()
    gathered = gather(cur)
    return finish(cfg, rules, gathered, {"read_gates_embed_s": time.perf_counter() - clock})


def check_verdicts_outside(cfg: Config) -> None:
    """A verdict file inside the output folder would be deleted by this run's outputs replacing the folder: the
    reviewer's work lost, and the next run with the same path would bring rejected records back."""
    if cfg.curate.review_verdicts is None:
        return
    verdicts, output_dir = resolve_path(cfg.curate.review_verdicts).resolve(), cfg.run.output_dir("curate").resolve()
    if verdicts.is_relative_to(output_dir):
        raise ConfigError(f"curate.review_verdicts={verdicts} is inside the folder this run replaces ({output_dir}): "
                          f"copy it out of there first")


@dataclass(frozen=True)
class Gathered:
    """What the Ray Data stages hand to the driver."""
    summary: list[dict]  # every input row's SUMMARY_COLUMNS, bad input (status "error") included
    review: list[dict]  # full rows the gates sent to review
    candidates: list[dict]  # full rows the gates kept, with their `embedding`, in seq order


def gather(cur: CurateConfig) -> Gathered:
    from ray.data.expressions import col

    rows = embed(gate(cur), cur).materialize()
    summary = rows.select_columns(list(SUMMARY_COLUMNS)).take_all()
    return Gathered(summary, rows.filter(expr=col("status") == "review").take_all(),
                    sorted(rows.filter(expr=col("status") == "keep").take_all(), key=lambda row: row["seq"]))


def finish(cfg: Config, rules: list, gathered: Gathered, timings: dict[str, float]) -> CurationResult:
    """The driver's part, no Ray: diversity filter, mix, spot-check sample, report, outputs."""
    cur = cfg.curate
    summary, candidates = gathered.summary, gathered.candidates
    bad = bad_input(summary)
    if bad["malformed_records"] or bad["unreadable_sources"]:
        log.warning("skipped %d malformed records and %d unreadable sources (listed in report.json), e.g. %s: %s",
                    bad["malformed_records"], bad["unreadable_sources"], bad["entries"][0]["where"],
                    bad["entries"][0]["reason"])
    if not candidates:
        if all(row["status"] == "error" for row in summary):
            first = bad["entries"][:3]
            raise EmptyDatasetError(f"nothing left to curate: no record of curate.sources could be read "
                                    f"({bad['malformed_records']} malformed records, {bad['unreadable_sources']} "
                                    f"unreadable sources; first: "
                                    f"{'; '.join(e['where'] + ': ' + e['reason'] for e in first)})")
        queue = ""
        if gathered.review:  # the review is the way on: its queue must exist for a person to work through
            queue = write_review_queue(cfg.run.output_dir("curate"), gathered.review)
            queue = (f"; {len(gathered.review)} went to review: their queue is {queue} (copy it elsewhere, fill in "
                     f"verdicts, rerun with curate.review_verdicts=<the copy>)")
        raise EmptyDatasetError(f"no record passed the quality gates: {_status_counts(summary)}; "
                                f"see the per-rule thresholds in curate.*{queue}")
    clock = time.perf_counter()
    dedup = greedy_dedup(np.stack([row["embedding"] for row in candidates]), cur.max_similarity,
                         cur.dedup_block_size)
    timings["dedup_s"] = time.perf_counter() - clock

    by_category: dict[str, list[dict]] = {}
    for i in dedup.kept:
        by_category.setdefault(candidates[i]["category"], []).append(candidates[i])
    plan = plan_mix({c: len(rows) for c, rows in by_category.items()}, cur.mix, cur.target_size)
    final = sample_mix(by_category, plan, cfg.run.seed)
    if not final:
        raise EmptyDatasetError(f"the mix selected no records (available per category after the diversity "
                                f"filter: { {c: len(r) for c, r in by_category.items()} }, target_size "
                                f"{cur.target_size}); give every category in curate.mix some sources")
    spot_ids = spot_check_sample([row["id"] for row in final], cur.spot_check_fraction, cfg.run.seed)

    report = build_report(cfg, rules, summary, gathered.review, candidates, dedup, plan.to_dict(), final,
                          spot_ids, timings)
    output_dir = cfg.run.output_dir("curate")
    write_outputs(output_dir, final, gathered.review, spot_ids, report,
                  [r["response_chars"] for r in summary if r["status"] != "error"], (cur.min_chars, cur.max_chars))
    log.info("curated %d of %d records into %s", len(final), report["accounting"]["input"], output_dir)
    return CurationResult(output_dir, report)


def gate(cur: CurateConfig):
    """Ray Data: one block per source → normalised rows → quality-gate columns."""
    import ray

    items = [{"index": i} for i in range(len(cur.sources))]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(read_source, fn_kwargs={"sources": cur.sources}, num_cpus=READ_CPUS)
    return ds.map_batches(QualityGates, fn_constructor_kwargs={"cfg": cur}, batch_size=GATE_BATCH,
                          num_cpus=GATE_CPUS, compute=ray.data.ActorPoolStrategy(size=cur.gate_workers))


def embed(ds, cur: CurateConfig):
    """Adds the `embedding` column (zeros for rows the gates did not keep)."""
    import ray

    return ds.map_batches(Embedder, fn_constructor_kwargs={"batch_size": cur.embed_batch_size,
                                                           "max_tokens": cur.embed_max_tokens},
                          batch_size=cur.embed_batch_size, num_cpus=EMBED_CPUS,
                          compute=ray.data.ActorPoolStrategy(size=cur.embed_workers))


def read_source(item: dict, sources: list[dict]) -> list[dict]:
    """Every record of one configured source as a pipeline row, in file order; each malformed record, or
    the source itself when it cannot be read at all, as an error row naming file:line and the reason."""
    index = item["index"]
    spec = sources[index]
    rows: list[dict] = []

    def skip(error: RecordError) -> None:
        rows.append(error_row(error, spec["category"], index * SEQ_STRIDE + len(rows)))

    for record in read_records(resolve_path(spec["path"]), spec.get("limit"), on_error=skip):
        rows.append(to_row(record, spec["category"], index * SEQ_STRIDE + len(rows)))
    return rows


class QualityGates:
    """Ray Data callable: each actor builds the rules once (lexicon, knowledge base, verdicts) and adds
    the gate columns to every row."""

    def __init__(self, cfg: CurateConfig):
        self.rules = build_rules(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outcomes = [self._judge(rid, record, error)
                    for rid, record, error in zip(batch["id"], batch["record"], batch["error"])]
        batch["status"] = np.array([o.status for o in outcomes], dtype=object)
        batch["rules"] = np.array([",".join(o.rules) for o in outcomes], dtype=object)
        batch["reasons"] = np.array([json.dumps(o.reasons, ensure_ascii=False) for o in outcomes], dtype=object)
        batch["notes"] = np.array([",".join(o.notes) for o in outcomes], dtype=object)
        return batch

    def _judge(self, rid: str, record: str, error: str) -> Outcome:
        if error:
            return Outcome("error")
        return evaluate(dict(json.loads(record), id=rid), self.rules)


def quiet_ray_data() -> None:
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def bad_input(summary: list[dict]) -> dict:
    """The rows that were not records: counted, and listed (file:line and reason) in source order."""
    bad = sorted((row for row in summary if row["status"] == "error"), key=lambda row: row["seq"])
    unreadable = sum(1 for row in bad if row["unreadable"])
    return {"malformed_records": len(bad) - unreadable, "unreadable_sources": unreadable,
            "listed": min(len(bad), BAD_INPUT_LISTED),
            "entries": [{"where": row["source"], "reason": row["error"],
                         "kind": "unreadable source" if row["unreadable"] else "malformed record"}
                        for row in bad[:BAD_INPUT_LISTED]]}


def _status_counts(summary: list[dict]) -> dict[str, int]:
    return dict(Counter(row["status"] for row in summary))


def build_report(cfg: Config, rules: list, summary: list[dict], review_rows: list[dict], candidates: list[dict],
                 dedup: DedupResult, mix: dict, final: list[dict], spot_ids: list[str],
                 timings: dict[str, float]) -> dict:
    cur = cfg.curate
    records = [row for row in summary if not row["unreadable"]]  # malformed ones included: they were input
    statuses = _status_counts(records)
    accounting = {"input": len(records), "malformed": statuses.get("error", 0),
                  "dropped_by_rules": statuses.get("drop", 0),
                  "review_queue": statuses.get("review", 0), "dropped_by_diversity": len(dedup.dropped),
                  "left_out_by_mix": len(dedup.kept) - len(final), "curated": len(final)}
    return {
        "run": cfg.run.name,
        "accounting": accounting,
        "accounting_by_source": accounting_by_source(summary, candidates, [p.index for p in dedup.dropped], final,
                                                     spot_ids),
        "input": {"by_source": dict(Counter(source_file(row) for row in records)),
                  "by_category": dict(Counter(row["category"] for row in records))},
        "bad_input": bad_input(summary),
        "rules": rule_counts(summary, rules),
        "annotation": annotation_report(records),
        "diversity": diversity_report(candidates, dedup, cur),
        "mix": mix,
        "spot_check": {"fraction": cur.spot_check_fraction, "seed": cfg.run.seed, "sampled": len(spot_ids)},
        "review_queue_by_rule": dict(Counter(n for row in review_rows for n in row["rules"].split(","))),
        "response_chars": {"before": _length_stats([r["response_chars"] for r in records if r["status"] != "error"]),
                           "after": _length_stats([r["response_chars"] for r in final])},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "config": to_dict(cur),
    }


def diversity_report(candidates: list[dict], dedup: DedupResult, cur: CurateConfig) -> dict:
    """Counts, plus the most similar dropped pairs and the ones just above the threshold (where a wrong
    threshold would show first)."""
    by_similarity = sorted(dedup.dropped, key=lambda p: -p.similarity)
    count = cur.report_pairs

    def entries(pairs):
        return [pair_entry(candidates[p.index], candidates[p.kept_index], p.similarity) for p in pairs]

    return {"candidates": len(candidates), "kept": len(dedup.kept), "dropped": len(dedup.dropped),
            "threshold": cur.max_similarity, "closest_pairs": entries(by_similarity[:count]),
            "borderline_pairs": entries(by_similarity[::-1][:count])}


def _length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    values = np.asarray(lengths)
    return {"count": len(lengths), "mean": round(float(values.mean()), 1), "median": float(np.median(values)),
            "min": int(values.min()), "max": int(values.max())}


def write_outputs(output_dir: Path, final: list[dict], review_rows: list[dict], spot_ids: list[str], report: dict,
                  lengths_before: list[int], limits: tuple[int, int]) -> None:
    """Everything goes to a temporary folder beside the target, which then replaces the target: a failed
    run leaves the previous outputs untouched and never a half-written set."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        curated = [dict(record_of(row), id=row["id"]) for row in final]
        _write_jsonl(tmp / "curated.jsonl", curated)
        write_parquet(tmp / "curated.parquet", curated)
        _write_jsonl(tmp / "review_queue.jsonl", [_review_entry(row) for row in review_rows])
        spot = set(spot_ids)
        _write_jsonl(tmp / "spot_check.jsonl", [dict(_review_fields(row), verdict=None) for row in final
                                                if row["id"] in spot])
        (tmp / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        plot_lengths(lengths_before, [row["response_chars"] for row in final], limits, tmp / "lengths.png")
        _swap_in(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_review_queue(output_dir: Path, review_rows: list[dict]) -> Path:
    """The review queue alone, written atomically into the output folder (a run that curated nothing leaves the
    rest of an earlier run's outputs as they were)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "review_queue.jsonl"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_jsonl(tmp, [_review_entry(row) for row in review_rows])
    tmp.replace(path)
    return path


def _swap_in(tmp: Path, output_dir: Path) -> None:
    old = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
    if output_dir.exists():
        output_dir.rename(old)
    tmp.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)


def _review_fields(row: dict) -> dict:
    record = record_of(row)
    return {"id": row["id"], "source": row["source"], "category": row["category"], "messages": record["messages"]}


def _review_entry(row: dict) -> dict:
    return dict(_review_fields(row), rules=row["rules"].split(","), reasons=json.loads(row["reasons"]),
                verdict=None)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
