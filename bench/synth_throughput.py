"""Synthetic-data generation throughput (issue 20), measured on this machine. Not a test.

    .venv/bin/python bench/synth_throughput.py [--count 192] [--part engines,http,funnel] [--funnel-count 1800]

engines: jobs.synthesize on the tiny model with a Ray Data pool of 1, then 2 vLLM rollout engines of one CPU
         each (the ratio 2 : 1 is what a second engine actor buys), and one engine on two CPUs (threads instead
         of actors) for comparison; candidates/s, all measured in the same run.
http:    the same work through the OpenAI-compatible HTTP generator against rayalign's own policy server
         (jobs.serve_policy, real Ray Serve on 127.0.0.1 with a bearer token) at 1, then 8 requests in flight;
         the ratio 8 : 1.
rdllm:   why the engine pool is rayalign's own: the task-writing generation alone (one per candidate, the same
         prompts, seeds and sampling) on `ray.data.llm`'s vLLM processor vs on the rollout-engine pool, one
         one-CPU engine each, start-up included; the ratio own : ray.data.llm.
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
            "seconds": speed["seconds"], "candidates_per_s": speed["candidates_per_s"],
            "after_first_batch_per_s": speed["after_first_batch_per_s"]}


def engines_part(root: Path, count: int) -> dict:
    rows = {f"{n}x{cpus}": timed_synthesis(synth_config(root, f"engines-{n}x{cpus}", count, f"synth.engines={n}",
                                                        f"synth.engine_cpus={cpus}"))
            for n, cpus in ((1, 1), (2, 1), (1, 2))}
    def ratio(a: str, b: str, key: str) -> float:
        return round(rows[a][key] / rows[b][key], 2)

    return {"levels": rows, "ratio_2_to_1": ratio("2x1", "1x1", "candidates_per_s"),
            "ratio_2_to_1_after_first_batch": ratio("2x1", "1x1", "after_first_batch_per_s"),
            "ratio_1x2_to_1x1": ratio("1x2", "1x1", "candidates_per_s")}


def http_part(root: Path, count: int) -> dict:
    from ray import serve

    from common.config import load_config
    from serve import policy_app
    from tests.helpers import free_port

    token_file = root / "token"
    token_file.write_text(TOKEN)
    cfg = load_config(REPO / "configs" / "synth-tiny.yaml", [
        f"serve_policy.model_path={REPO / load_config(None).model.path}", f"serve_policy.port={free_port()}",
        f"serve_policy.auth_token_file={token_file}"])
    url = policy_app.deploy(cfg)
    rows = {}
    try:
        for concurrency in (1, 8):
            rows[concurrency] = timed_synthesis(synth_config(
                root, f"http-{concurrency}", count, "synth.generator=http", f"synth.endpoint={url}",
                f"synth.token_file={token_file}", f"synth.concurrency={concurrency}"))
    finally:
        serve.shutdown()
    return {"levels": rows, "ratio_8_to_1": round(rows[8]["candidates_per_s"] / rows[1]["candidates_per_s"], 2)}


def one_stage_rows(cfg, count: int, seed: int) -> list[dict]:
    from jobs.synthesis.prompts import candidates, examples_for, load_seed_tasks, task_messages

    syn = cfg.synth
    tasks = load_seed_tasks(REPO / syn.seed_tasks if not Path(syn.seed_tasks).is_absolute() else syn.seed_tasks)
    return [{"index": c.index, "messages": json.dumps(task_messages(syn.template, examples_for(
        tasks, syn.examples_per_prompt, seed, c.seed_index), syn.max_example_chars))} for c in candidates(syn)[:count]]


class OwnEngineStage:
    """The task-writing generation on rayalign's rollout engine (jobs/synthesis/generators.py)."""

    def __init__(self, model_path: str, synth, seed: int, max_model_len: int):
        from jobs.synthesis.generators import EngineGenerator

        self.generator, self.max_tokens = EngineGenerator(model_path, synth, seed, max_model_len), synth.max_task_tokens

    def __call__(self, batch):
        import numpy as np

        from jobs.synthesis.prompts import TASK_DRAW

        out = self.generator.complete([json.loads(m) for m in batch["messages"]], [int(i) for i in batch["index"]],
                                      TASK_DRAW, self.max_tokens)
        batch["text"] = np.array([reply.text for reply in out], dtype=object)
        return batch


def rdllm_part(root: Path, count: int) -> dict:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from actors.chat import render
    from actors.modeling import load_tokenizer
    from actors.rollout.sample import sample_seed
    from jobs.synthesis.prompts import TASK_DRAW

    cfg = synth_config(root, "rdllm", count)
    syn, seed, model = cfg.synth, cfg.run.seed, str((REPO / cfg.model.path).resolve())
    rows = one_stage_rows(cfg, count, seed)
    max_model_len = syn.max_prompt_tokens + syn.max_task_tokens
    tokenizer = load_tokenizer(model)
    prompts = [{"index": r["index"], "prompt": render(tokenizer, json.loads(r["messages"]), add_generation_prompt=True)}
               for r in rows]

    started = time.perf_counter()
    own = ray.data.from_items(rows).map_batches(
        OwnEngineStage, fn_constructor_kwargs={"model_path": model, "synth": syn, "seed": seed,
                                               "max_model_len": max_model_len},
        batch_size=syn.batch_size, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    own_s = time.perf_counter() - started

    config = vLLMEngineProcessorConfig(
        model_source=model, batch_size=syn.batch_size, concurrency=1, accelerator_type=None,
        placement_group_config={"bundles": [{"CPU": 1}]}, chat_template_stage=False,
        runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                                  "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}},
        engine_kwargs={"enforce_eager": True, "dtype": "float32", "max_model_len": max_model_len,
                       "enable_chunked_prefill": False, "max_num_batched_tokens": 4096})

    def preprocess(row: dict) -> dict:  # the same rendered prompt, seed and sampling as the own engine
        return {"prompt": row["prompt"], "sampling_params": {
            "temperature": syn.temperature, "top_p": syn.top_p, "repetition_penalty": syn.repetition_penalty,
            "max_tokens": syn.max_task_tokens, "seed": sample_seed(seed, TASK_DRAW, row["index"])}}

    started = time.perf_counter()
    theirs = build_processor(config, preprocess=preprocess,
                             postprocess=lambda row: {"text": row["generated_text"]})(
        ray.data.from_items(prompts)).take_all()
    theirs_s = time.perf_counter() - started
    return {"candidates": count, "own_engine_s": round(own_s, 1), "ray_data_llm_s": round(theirs_s, 1),
            "own_rows": len(own), "ray_data_llm_rows": len(theirs),
            "ratio_own_to_ray_data_llm": round(theirs_s / own_s, 2)}


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
    parser.add_argument("--part", default="engines,http,rdllm,funnel", help="which parts to run, comma-separated")
    parser.add_argument("--funnel-count", type=int, default=1800, help="fresh candidates in the funnel run "
                                                                      "(plus a ninth as many repeats)")
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the embedded cluster (default: "
                                                                    "the recipe's ray.num_cpus, 2)")
    args = parser.parse_args()
    from cluster import runtime
    from common.config import load_config

    overrides = [] if args.num_cpus is None else [f"ray.num_cpus={args.num_cpus}"]
    runtime.start(load_config(REPO / "configs" / "synth-tiny.yaml", overrides).ray)
    results: dict = {"count": args.count}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for part in args.part.split(","):
            results[part] = {"engines": engines_part, "http": http_part, "rdllm": rdllm_part,
                             "funnel": funnel_part}[part](
                root, args.funnel_count if part == "funnel" else args.count)
            print(part, json.dumps(results[part], indent=1))
    runtime.stop()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "synth_throughput.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}  # parts not run this time keep their figures
    path.write_text(json.dumps({**kept, **results}, indent=2))


if __name__ == "__main__":
    main()
