"""Synthetic-data generation throughput (issue 20), measured on this machine. Not a test.

    .venv/bin/python bench/synth_throughput.py [--count 192] [--part engines,http,funnel] [--funnel-count 1800]

engines: jobs.synthesize on the tiny model with a Ray Data pool of 1, then 2 vLLM rollout engines of one CPU
         each (the ratio 2 : 1 is what a second engine actor buys), and one engine on two CPUs (threads instead
         of actors) for comparison; candidates/s, all measured in the same run.
http:    the same work through the OpenAI-compatible HTTP generator against rayalign's own policy server
         (jobs.serve_policy, real Ray Serve on 127.0.0.1 with a bearer token) at 1, then 8 requests in flight;
         the ratio 8 : 1.
funnel:  the whole funnel (jobs.funnel) on --funnel-count candidates plus 10% deliberate repeats (2,000 by
         default): prints every stage's count, whether the counts add up, and how many repeats survived (should
         be 0).
Each configuration runs in a fresh output folder (no shards reused). Writes bench/results/synth_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
TOKEN = "synth-bench-token"


def synth_config(root: Path, name: str, count: int, *overrides: str):
    from common.config import load_config

    return load_config(REPO / "configs" / "synth-tiny.yaml",
                       [f"run.output_root={root}", f"run.name={name}", f"synth.count={count}",
                        "synth.repeat_seeds=0", "synth.batch_size=32", *overrides])


def timed_synthesis(cfg) -> dict:
    from jobs.synthesis.run import run

    result = run(cfg)
    speed = result.report["throughput"]
    return {"generated": result.report["counts"]["generated"], "failed": result.report["counts"]["failed"],
            "seconds": speed["seconds"], "candidates_per_s": speed["candidates_per_s"]}


def engines_part(root: Path, count: int) -> dict:
    rows = {f"{n}x{cpus}": timed_synthesis(synth_config(root, f"engines-{n}x{cpus}", count, f"synth.engines={n}",
                                                        f"synth.engine_cpus={cpus}"))
            for n, cpus in ((1, 1), (2, 1), (1, 2))}
    return {"levels": rows, "ratio_2_to_1": round(rows["2x1"]["candidates_per_s"] / rows["1x1"]["candidates_per_s"], 2),
            "ratio_1x2_to_1x1": round(rows["1x2"]["candidates_per_s"] / rows["1x1"]["candidates_per_s"], 2)}


def http_part(root: Path, count: int) -> dict:
    from common.config import load_config
    from serve.policy_app import start_policy_server  # noqa: F401  (resolved below; see serve/policy_app.py)

    token_file = root / "token"
    token_file.write_text(TOKEN)
    cfg = load_config(REPO / "configs" / "synth-tiny.yaml", [f"run.output_root={root}"])
    url = start_policy_server(cfg, token_file)
    rows = {}
    for concurrency in (1, 8):
        rows[concurrency] = timed_synthesis(synth_config(
            root, f"http-{concurrency}", count, "synth.generator=http", f"synth.endpoint={url}",
            f"synth.token_file={token_file}", f"synth.concurrency={concurrency}"))
    return {"levels": rows, "ratio_8_to_1": round(rows[8]["candidates_per_s"] / rows[1]["candidates_per_s"], 2)}


def funnel_part(root: Path, count: int) -> dict:
    from jobs.funnel import run

    repeats = count // 9  # 10% of the total are repeats
    cfg = synth_config(root, "funnel", count, f"synth.repeat_seeds={repeats}", "synth.batch_size=100")
    started = time.perf_counter()
    result = run(cfg)
    seconds = time.perf_counter() - started
    curated = [json.loads(line) for line in result.curated_file.read_text().splitlines()]
    survived = sum(1 for r in curated if r["columns"]["provenance"]["candidate"] >= count)
    return {"stages": {s["stage"]: s["count"] for s in result.stages}, "counts_add_up": not result.problems,
            "problems": result.problems, "repeats": repeats, "repeats_surviving": survived,
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=192, help="candidates per throughput configuration")
    parser.add_argument("--part", default="engines,http,funnel", help="which parts to run, comma-separated")
    parser.add_argument("--funnel-count", type=int, default=1800, help="fresh candidates in the funnel run "
                                                                      "(plus a ninth as many repeats)")
    args = parser.parse_args()
    from cluster import runtime
    from common.config import load_config

    runtime.start(load_config(REPO / "configs" / "synth-tiny.yaml").ray)
    results: dict = {"count": args.count}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for part in args.part.split(","):
            results[part] = {"engines": engines_part, "http": http_part, "funnel": funnel_part}[part](
                root, args.funnel_count if part == "funnel" else args.count)
            print(part, json.dumps(results[part], indent=1))
    runtime.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "synth_throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
