"""Lock-step against overlapped rollouts (ppo.async_rollouts=1, issue 22), the same seeded GRPO run on the keyword
task, measured on this machine. Not a test.

    .venv/bin/python bench/async_rollouts.py [--steps 20] [--seed 7] [--size 0.4M|25M]

Each mode runs once on one Ray cluster, after a 2-step warm-up run that pays the cluster's first start-up: lock-step,
overlapped with PPO's ratio against the engine's log-probs (rollout_correction=none), and overlapped with the ratio
against the current policy corrected towards the engine's by TIS (decoupled PPO). Printed: the steps' total and
median time (step 1 has nothing to overlap), their ratio to lock-step, the whole run's wall time, the staleness each
run trained on, and the reward curves side by side (first-5 → last-5 means, and every step in a table);
bench/results/async_rollouts.json and .png keep them. On a machine with fewer cores than busy roles the engines and
the trainer take cores from each other, so the overlap can lose; on a GPU it should not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
TASK = ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "ppo.rollout_batch_size=8",
        "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.lr=2e-4", "ppo.max_prompts=256", "ppo.save_every=100",
        "ppo.export=false", "ppo.report_prompts=[]", "ppo.kl.controller=fixed", "ppo.kl.coef=0.05",
        "ppo.rollout.max_new_tokens=24", "ppo.rollout.max_prompt_tokens=96", "ppo.reward.rm_source=keyword",
        "ppo.reward.rm_keyword=happy", "ppo.reward.enabled_terms=[rm, kl]"]
MODES = {"lock-step": ["ppo.async_rollouts=0"],
         "overlapped": ["ppo.async_rollouts=1"],  # ratio against the engine's log-probs
         "overlapped + tis": ["ppo.async_rollouts=1", "ppo.rollout_correction=tis"]}  # decoupled PPO


def model_overrides(size: str, folder: Path) -> list[str]:
    """The 0.4M TinyStories policy the tests use, or a 25.6M random Llama of the same tokenizer (bench/peers.py's)."""
    if size == "0.4M":
        return []
    from bench.peer_models import RECIPE, random_llama
    from common.config import load_config, resolve_path

    random_llama(folder / "llama25m", str(resolve_path(load_config(RECIPE).model.path)))
    return [f"model.path={folder / 'llama25m'}"]


def run_mode(overrides: list[str]) -> tuple[list[dict], float]:
    from common.config import load_config
    from common.metrics import read_jsonl
    from jobs.ppo import run

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = run(load_config(REPO / "configs" / "tiny-cpu.yaml", [f"run.output_root={tmp}", *TASK, *overrides]))
        seconds = time.perf_counter() - started
        return [row for row in read_jsonl(result.output_dir / "metrics.jsonl") if row["step"] > 0], seconds


def summary(rows: list[dict], wall: float) -> dict:
    rewards = [row["reward/rm_mean"] for row in rows]
    return {"step_s_median": statistics.median(row["time/step"] for row in rows[1:]), "wall_s": wall,
            "steps_s": sum(row["time/step"] for row in rows),
            "reward_first5": statistics.fmean(rewards[:5]), "reward_last5": statistics.fmean(rewards[-5:]),
            "kl_k3_last5": statistics.fmean(row["kl_k3"] for row in rows[-5:]),
            "staleness_mean": statistics.fmean(row["rollout/staleness"] for row in rows),
            "rewards": rewards, "step_s": [row["time/step"] for row in rows]}


def plot(found: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reward, seconds) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for name, result in found.items():
        steps = range(1, len(result["rewards"]) + 1)
        reward.plot(steps, result["rewards"], label=name)
        seconds.plot(steps, result["step_s"], label=name)
    reward.set_ylabel("reward/rm_mean")
    seconds.set_ylabel("time/step (s)")
    seconds.set_xlabel("step")
    reward.legend()
    fig.suptitle("lock-step vs overlapped rollouts, GRPO on the keyword task")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="PPO steps of each run")
    parser.add_argument("--seed", type=int, default=7, help="run.seed of both runs")
    parser.add_argument("--size", choices=("0.4M", "25M"), default="0.4M", help="policy size")
    args = parser.parse_args()
    from cluster import runtime
    from common.config import RayConfig

    runtime.start(RayConfig(num_cpus=8))
    found = {}
    try:
        with tempfile.TemporaryDirectory() as models:
            shared = [f"run.seed={args.seed}", f"ppo.steps={args.steps}", *model_overrides(args.size, Path(models))]
            run_mode([*shared, "ppo.steps=2"])  # warm-up: the first run on a fresh cluster pays its start-up
            for name, overrides in MODES.items():
                found[name] = summary(*run_mode([*shared, *overrides]))
                r = found[name]
                print(f"{name}: steps {r['steps_s']:.1f} s, median {r['step_s_median']:.2f} s/step (steps 2..), "
                      f"{r['wall_s']:.1f} s in all, "
                      f"reward {r['reward_first5']:.2f} → {r['reward_last5']:.2f}, KL {r['kl_k3_last5']:.2f}, "
                      f"staleness {r['staleness_mean']:.2f}", flush=True)
    finally:
        runtime.stop()
    lock = found["lock-step"]
    for name, over in found.items():
        if name != "lock-step":
            print(f"{name} vs lock-step: {lock['steps_s'] / over['steps_s']:.2f}x the steps' time, "
                  f"{lock['step_s_median'] / over['step_s_median']:.2f}x the median step, "
                  f"{lock['wall_s'] / over['wall_s']:.2f}x end to end")
    print("step | " + " | ".join(f"reward {name}" for name in found))
    for step, rewards in enumerate(zip(*(r["rewards"] for r in found.values())), 1):
        print(f"{step:4d} | " + " | ".join(f"{value:.3f}" for value in rewards))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "async_rollouts.json"
    path.write_text(json.dumps({"seed": args.seed, "steps": args.steps, "size": args.size, **found}, indent=2))
    plot(found, RESULTS / "async_rollouts.png")
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
