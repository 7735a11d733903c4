"""Curation throughput: records/s of the whole jobs.curate run and of the all-MiniLM-L6-v2 embedding step
alone, each with 1 and with 2 Ray Data workers, and the diversity filter at N = 10,000: one full N×N
similarity matrix ("all pairs") against the blocked index of jobs/curation/dedup.py. Not a test; prints
one table, with each ratio against a baseline measured in the same run, and writes bench/results/
curate_throughput.json.

    .venv/bin/python bench/curate_throughput.py [--config configs/curate-tiny.yaml] [--limit 150] [--n 10000]

Records: the sources of --config with their `limit`s replaced by --limit (0: every record of every source).
Workers: curate.gate_workers = curate.embed_workers = 1, then 2 (the sizes of the two Ray Data actor pools;
each embedding actor holds one logical CPU, and Ray gives it one torch thread). The embedded Ray cluster
gets --num-cpus logical CPUs so that 2 workers per stage fit at all; the machine's cores are what limit.
Embedding alone runs the job's Embedder over every record (gates skipped) on an actor pool set up as the
job's embed stage sets it up, timed end to end (actor start and model load included) and from the first
batch to the last (steady state), against the same encoder in this process with 1 torch thread (what one
actor gets) and with every core. The diversity filter runs on real embeddings of the job's records,
repeated up to --n (as in bench/curate_dedup.py, so later copies are exact duplicates), and on --n random
unit vectors (nothing is similar: every record is kept, the blocked index's worst case); the per-pair
Python loop of bench/curate_dedup.py is left out at this size (minutes). The JSON records the load average
before and after: on a shared machine, compare ratios from a quiet run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common.config import load_config, resolve_path, with_overrides
from common.records import read_records
from jobs.curation.dedup import Embedder, encode, greedy_dedup, load_encoder
from jobs.curation.rows import SEQ_STRIDE, embedding_text, to_row

RESULTS = Path(__file__).resolve().parent / "results"
WORKERS = (1, 2)


def all_pairs_dedup(vectors: np.ndarray, threshold: float) -> list[int]:
    """The baseline index: the whole N×N similarity matrix at once, then the greedy pass over its rows
    (a kept record removes every later record at least `threshold` similar to it)."""
    sims = vectors @ vectors.T
    removed = np.zeros(len(vectors), dtype=bool)
    kept: list[int] = []
    for i in range(len(vectors)):
        if not removed[i]:
            kept.append(i)
            removed[i + 1:] |= sims[i, i + 1:] >= threshold
    return kept


class TimedEmbedder(Embedder):
    """The job's Embedder, stamping each batch's start and end so the steady state excludes actor start."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.time()
        batch = super().__call__(batch)
        batch["t_start"] = np.full(len(batch["record"]), started)
        batch["t_end"] = np.full(len(batch["record"]), time.time())
        return batch


def job_config(path: str, limit: int, workers: int, num_cpus: int, output_root: str):
    cfg = load_config(path, [f"run.output_root={output_root}", f"ray.num_cpus={num_cpus}",
                             f"curate.gate_workers={workers}", f"curate.embed_workers={workers}"])
    sources = [{k: v for k, v in s.items() if k != "limit"} | ({"limit": limit} if limit else {})
               for s in cfg.curate.sources]
    return with_overrides(cfg, curate=replace(cfg.curate, sources=sources))


def source_rows(cfg) -> list[dict]:
    """Every readable record of the sources as a pipeline row marked "keep" (embedding alone skips the gates)."""
    rows = []
    for index, spec in enumerate(cfg.curate.sources):
        records = read_records(resolve_path(spec["path"]), spec.get("limit"), on_error=lambda error: None)
        rows.extend(dict(to_row(r, spec["category"], index * SEQ_STRIDE + i), status="keep")
                    for i, r in enumerate(records))
    return rows


def ray_embed(rows: list[dict], cfg) -> dict:
    import ray

    from jobs.curation import pipeline

    cur = cfg.curate
    started = time.perf_counter()
    ds = ray.data.from_items(rows, override_num_blocks=len(cur.sources))
    out = ds.map_batches(TimedEmbedder, fn_constructor_kwargs={"batch_size": cur.embed_batch_size,
                                                               "max_tokens": cur.embed_max_tokens},
                         batch_size=cur.embed_batch_size, num_cpus=pipeline.EMBED_CPUS,
                         compute=ray.data.ActorPoolStrategy(size=cur.embed_workers))
    stamps = out.select_columns(["t_start", "t_end"]).take_all()
    wall = time.perf_counter() - started
    assert len(stamps) == len(rows), f"embedded {len(stamps)} of {len(rows)} rows"
    steady = max(s["t_end"] for s in stamps) - min(s["t_start"] for s in stamps)
    return {"records": len(rows), "wall_s": wall, "steady_s": steady}


def full_job(cfg) -> dict:
    from jobs.curation import pipeline

    started = time.perf_counter()
    result = pipeline.run(cfg)
    wall = time.perf_counter() - started
    return {"records": result.report["accounting"]["input"], "wall_s": wall,
            "curated": result.report["accounting"]["curated"],
            "embedded": result.report["diversity"]["candidates"], "timings_s": result.report["timings_s"]}


def actor_torch_threads() -> int:
    """How many torch threads a Ray worker holding EMBED_CPUS gets (Ray sets OMP_NUM_THREADS from num_cpus)."""
    import ray

    from jobs.curation.pipeline import EMBED_CPUS

    @ray.remote(num_cpus=EMBED_CPUS)
    def threads() -> int:
        import torch

        return torch.get_num_threads()

    return ray.get(threads.remote())


def median_time(fn, *args, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - started)
    return result, statistics.median(times), times


def dedup_pair(vectors: np.ndarray, threshold: float, block_size: int, repeats: int) -> dict:
    blocked, blocked_s, blocked_all = median_time(greedy_dedup, vectors, threshold, block_size, repeats=repeats)
    pairs, pairs_s, pairs_all = median_time(all_pairs_dedup, vectors, threshold, repeats=repeats)
    assert pairs == blocked.kept, "both indexes must keep exactly the records the definition keeps"
    return {"n": len(vectors), "kept": len(blocked.kept), "blocked_s": blocked_s, "all_pairs_s": pairs_s,
            "blocked_runs_s": blocked_all, "all_pairs_runs_s": pairs_all}


def table(r: dict) -> str:
    lines = [f"{'measurement':60s} |      N |     s | records/s | {'baseline (same run)':28s} |   rec/s | ratio",
             f"{'-' * 61}|--------|-------|-----------|{'-' * 30}|---------|------"]

    def row(name, n, seconds, base_name="", base_seconds=None):
        rate = n / seconds
        base = f"{base_name:28s} | {n / base_seconds:7.1f} | {rate / (n / base_seconds):4.2f}x" if base_seconds \
            else f"{'':28s} | {'':7s} |"
        lines.append(f"{name:60s} | {n:6d} | {seconds:5.1f} | {rate:9.1f} | {base}")

    local, single = r["embed_in_process"], r["embed_in_process_1_thread"]
    row("embedding alone, in-process, 1 torch thread", single["records"], single["seconds"])
    row(f"embedding alone, in-process, {local['torch_threads']} torch threads", local["records"], local["seconds"],
        "in-process, 1 thread", single["seconds"])
    if "job" in r:
        e1, e2 = r["embed_ray"]["1"], r["embed_ray"]["2"]
        row("embedding alone, Ray Data 1 actor (1 thread), steady", e1["records"], e1["steady_s"],
            "in-process, 1 thread", single["seconds"])
        row("embedding alone, Ray Data 2 actors, steady", e2["records"], e2["steady_s"], "1 actor, steady",
            e1["steady_s"])
        row("embedding alone, Ray Data 1 actor, end to end", e1["records"], e1["wall_s"])
        row("embedding alone, Ray Data 2 actors, end to end", e2["records"], e2["wall_s"], "1 actor, end to end",
            e1["wall_s"])
        j1, j2 = r["job"]["1"], r["job"]["2"]
        row("whole curation job, 1 worker per stage", j1["records"], j1["wall_s"])
        row("whole curation job, 2 workers per stage", j2["records"], j2["wall_s"], "1 worker per stage",
            j1["wall_s"])
    for key, label in (("real", "real embeddings, repeated"), ("random", "random vectors, all kept")):
        d = r["dedup"][key]
        row(f"diversity filter N={d['n']}, {label}: blocked", d["n"], d["blocked_s"], "all-pairs N×N matrix",
            d["all_pairs_s"])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/curate-tiny.yaml",
                        help="curation config whose sources (and thresholds) the job runs on")
    parser.add_argument("--limit", type=int, default=150,
                        help="records read per source, replacing the config's limits (0: all of every source)")
    parser.add_argument("--num-cpus", type=int, default=4,
                        help="logical CPUs of the embedded Ray cluster (enough for 2 actors per stage)")
    parser.add_argument("--n", type=int, default=10_000, help="records in the diversity-filter comparison")
    parser.add_argument("--repeats", type=int, default=5, help="diversity-filter runs per index (median reported)")
    parser.add_argument("--skip-jobs", action="store_true",
                        help="skip the Ray measurements (whole job, Ray embedding): in-process and filter only")
    args = parser.parse_args()

    load_before = os.getloadavg()
    results: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_cores": os.cpu_count(),
                     "machine": platform.platform(), "args": vars(args)}
    cfg = job_config(args.config, args.limit, 1, args.num_cpus, "outputs")
    rows = source_rows(cfg)
    print(f"curation throughput: {len(rows)} records from {len(cfg.curate.sources)} sources of {args.config} "
          f"(limit {args.limit or 'none'}), {os.cpu_count()} CPU cores, load average {load_before[0]:.1f}",
          flush=True)

    started = time.perf_counter()
    model = load_encoder(cfg.curate.embed_max_tokens)
    load_s = time.perf_counter() - started
    texts = [embedding_text(json.loads(row["record"])) for row in rows]
    encode(model, texts[:8])  # first-call costs (thread pools, tokenizer caches) stay out, as in the steady state
    started = time.perf_counter()
    vectors = encode(model, texts, cfg.curate.embed_batch_size)
    results["embed_in_process"] = {"records": len(rows), "seconds": time.perf_counter() - started,
                                   "model_load_s": load_s, "torch_threads": torch.get_num_threads()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what one Ray embedding actor gets: the baseline for Ray Data's own overhead
    started = time.perf_counter()
    encode(model, texts, cfg.curate.embed_batch_size)
    results["embed_in_process_1_thread"] = {"records": len(rows), "seconds": time.perf_counter() - started}
    torch.set_num_threads(threads)
    print(f"  in-process embedding: {results['embed_in_process']['seconds']:.1f} s with {threads} threads, "
          f"{results['embed_in_process_1_thread']['seconds']:.1f} s with 1", flush=True)

    real = vectors[np.arange(args.n) % len(vectors)]
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(args.n, vectors.shape[1])).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    matrix_gib = args.n ** 2 * 4 / 2 ** 30
    results["dedup"] = {}
    for key, data in (("real", real), ("random", noise)):
        results["dedup"][key] = dedup_pair(data, cfg.curate.max_similarity, cfg.curate.dedup_block_size,
                                           args.repeats)
        print(f"  diversity filter ({key}): {results['dedup'][key]}", flush=True)
    results["dedup"]["all_pairs_matrix_gib"] = matrix_gib

    if not args.skip_jobs:
        from cluster import runtime
        from jobs.curation.pipeline import quiet_ray_data

        runtime.start(cfg.ray)
        quiet_ray_data()
        try:
            results["embed_actor_torch_threads"] = actor_torch_threads()
            results["embed_ray"], results["job"] = {}, {}
            with tempfile.TemporaryDirectory() as tmp:
                for workers in WORKERS:
                    run_cfg = job_config(args.config, args.limit, workers, args.num_cpus, tmp)
                    results["embed_ray"][str(workers)] = ray_embed(rows, run_cfg)
                    print(f"  Ray embedding, {workers} actor(s): {results['embed_ray'][str(workers)]}", flush=True)
                    results["job"][str(workers)] = full_job(run_cfg)
                    print(f"  whole job, {workers} worker(s): {results['job'][str(workers)]}", flush=True)
        finally:
            runtime.stop()
    results["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]

    print(table(results))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "curate_throughput.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
