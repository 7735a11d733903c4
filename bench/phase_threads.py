"""What threads per role buy, phase by phase (issue 18). Not a test.

    .venv/bin/python bench/phase_threads.py [--steps 6] [--size 0.4M|25M] [--estimator grpo|gae]

The same seeded PPO run twice on this machine: every role on one torch thread (what Ray's OMP_NUM_THREADS=1
gave each actor before: ppo.role_threads={policy: 1, value: 1, reference: 1, rollout: 1}) and with the automatic plan
(each role gets the node's cores divided by the ranks busy in its phase, actors/threads.py). Prints seconds per
phase (mean over the steps after the first) side by side with the ratio.
`--size 25M` builds a Llama-shaped model with random weights (hidden 512, 8 layers, head dim 64) in code.
Writes bench/results/phase_threads.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PHASES = ("rollout", "score", "reference", "values", "advantages", "train", "sync", "monitor", "act", "step")
ONE_THREAD = "ppo.role_threads={policy: 1, value: 1, reference: 1, rollout: 1}"


def random_llama(folder: Path, hidden: int, layers: int, tokenizer_from: str) -> int:
    """A Llama-shaped model with random weights and the tiny policy's tokenizer, saved as a HF folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                         intermediate_size=int(hidden * 8 / 3 // 64 * 64),
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return sum(p.numel() for p in model.parameters())


def run(model_path: str, steps: int, estimator: str, *overrides: str) -> dict:
    """Per-phase mean seconds (steps after the first) and the roles' start-up time of one PPO run."""
    from common.config import load_config
    from common.metrics import read_jsonl
    from jobs.ppo import run as run_ppo

    group = ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "ppo.rollout_batch_size=8"] \
        if estimator == "grpo" else ["ppo.rollout_batch_size=32"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", [
            f"run.output_root={tmp}", f"model.path={model_path}", f"ppo.steps={steps}", *group,
            "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.rollout.max_new_tokens=24", "ppo.save_every=100",
            "ppo.export=false", "ppo.report_prompts=[]", "ppo.reward.rm_source=keyword", "run.seed=7", *overrides])
        started = time.perf_counter()
        result = run_ppo(cfg)
        wall = time.perf_counter() - started
        rows = read_jsonl(result.output_dir / "metrics.jsonl")[1:]
    return {"phases": {p: statistics.fmean(r.get(f"time/{p}", 0.0) for r in rows) for p in PHASES}, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", choices=["0.4M", "25M"], default="0.4M")
    parser.add_argument("--estimator", choices=["grpo", "gae"], default="grpo")
    args = parser.parse_args()
    from cluster import runtime
    from common.config import RayConfig, resolve_path

    tiny = str(resolve_path("../shared/models/stories260K-hd32"))
    runtime.start(RayConfig(num_cpus=8))
    try:
        with tempfile.TemporaryDirectory() as folder:
            path, params = tiny, 444_352
            if args.size == "25M":
                path, params = folder, random_llama(Path(folder), 512, 8, tiny)
            results = {"one thread per role": run(path, args.steps, args.estimator, ONE_THREAD),
                       "automatic plan": run(path, args.steps, args.estimator)}
    finally:
        runtime.stop()
    one, auto = results["one thread per role"]["phases"], results["automatic plan"]["phases"]
    print(f"{params / 1e6:.1f}M parameters, {args.estimator}, {args.steps} steps (means over steps 2..)")
    print(f"{'phase':<12}{'1 thread':>10}{'auto':>10}{'speed-up':>10}")
    for phase in PHASES:
        if one[phase] > 0.0005 or auto[phase] > 0.0005:
            print(f"{phase:<12}{one[phase]:>10.3f}{auto[phase]:>10.3f}{one[phase] / max(auto[phase], 1e-9):>9.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"phase_threads-{args.size}-{args.estimator}.json"
    out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M"), "params": params, "steps": args.steps,
                               "estimator": args.estimator, **results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
