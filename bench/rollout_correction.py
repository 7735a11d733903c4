"""The PPO ratio against the distribution that sampled (issue 23), measured on this machine. Not a test.

    .venv/bin/python bench/rollout_correction.py [--steps 20] [--seed 7]

1. mismatch: how far the trainer's temperature-only π_old is from the distribution vLLM sampled from (its
   processed log-probs), per token, at the seed defaults (top_p 0.9, repetition penalty 1.2) and with each of
   them switched off: the k3 KL(behaviour ‖ π_old) and the share of tokens whose ratio π_old/π_behaviour lies
   outside [0.5, 2]. Read from the first step of one-step runs (before any update, so only sampling differs).
2. learning: the same seeded GRPO run on the keyword task (8 prompts × 4 answers, 20 steps, 2 PPO epochs) with
   the ratio taken as before (temperature only, no correction), with the sampler's processed log-probs
   (ppo.trainer_logprobs=processed), and with the temperature-only ratio corrected by TIS or by masking
   (ppo.rollout_correction, C = 2): reward first-5 → last-5 step means, the KL to the reference, the clip
   fraction and the mismatch the ratio still sees.
Writes bench/results/rollout_correction.json.
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
TASK = ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=4", "ppo.rollout_batch_size=8",
        "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.lr=2e-4", "ppo.max_prompts=256", "ppo.save_every=100",
        "ppo.export=false", "ppo.report_prompts=[]", "ppo.kl.controller=fixed", "ppo.rollout.max_new_tokens=24",
        "ppo.rollout.max_prompt_tokens=96", "ppo.reward.rm_source=keyword", "ppo.reward.rm_keyword=happy",
        "ppo.reward.enabled_terms=[rm, kl]"]
SAMPLERS = {"seed defaults (top_p 0.9, penalty 1.2)": [],
            "top_p 0.9 only (penalty off)": ["ppo.rollout.repetition_penalty=1.0"],
            "penalty 1.2 only (top_p off)": ["ppo.rollout.top_p=1.0"]}
VARIANTS = {"temperature-only ratio, no correction (before)": ["ppo.trainer_logprobs=temperature"],
            "(a) processed log-probs": ["ppo.trainer_logprobs=processed"],
            "(b) temperature-only + tis, C=2": ["ppo.trainer_logprobs=temperature", "ppo.rollout_correction=tis"],
            "(b) temperature-only + mask, C=2": ["ppo.trainer_logprobs=temperature", "ppo.rollout_correction=mask"]}


def ppo_rows(overrides: list[str]) -> tuple[list[dict], float]:
    from common.config import load_config
    from common.metrics import read_jsonl
    from jobs.ppo import run

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = run(load_config(REPO / "configs" / "tiny-cpu.yaml", [f"run.output_root={tmp}", *TASK, *overrides]))
        return read_jsonl(result.output_dir / "metrics.jsonl"), time.perf_counter() - started


def mean(rows: list[dict], key: str, window: slice = slice(None)) -> float:
    return statistics.fmean(row[key] for row in rows[window])


def mismatch(seed: int) -> dict:
    out = {}
    for name, overrides in SAMPLERS.items():
        rows, _ = ppo_rows([f"run.seed={seed}", "ppo.steps=1", *overrides])
        out[name] = {"behaviour_kl": rows[0]["rollout/behaviour_kl_temperature"],
                     "ratio_outside_share": rows[0]["rollout/ratio_outside_share_temperature"]}
        print(f"  {name}: KL {out[name]['behaviour_kl']:.3f} nats/token, "
              f"{out[name]['ratio_outside_share']:.1%} of tokens outside [0.5, 2]", flush=True)
    return out


def learning(steps: int, seed: int) -> dict:
    out = {}
    for name, overrides in VARIANTS.items():
        rows, seconds = ppo_rows([f"run.seed={seed}", f"ppo.steps={steps}", *overrides])
        out[name] = {"reward_first5": mean(rows, "reward/rm_mean", slice(0, 5)),
                     "reward_last5": mean(rows, "reward/rm_mean", slice(-5, None)),
                     "kl_k3_last5": mean(rows, "kl_k3", slice(-5, None)),
                     "clip_frac": mean(rows, "policy/clip_frac"),
                     "ratio_behaviour_kl": mean(rows, "rollout/behaviour_kl"),
                     "ratio_outside_share": mean(rows, "rollout/ratio_outside_share"),
                     "correction_share": mean(rows, "policy/correction_share"),
                     "seconds_per_step": mean(rows, "time/step", slice(1, None)), "wall_s": seconds}
        r = out[name]
        print(f"  {name}: reward {r['reward_first5']:.2f} → {r['reward_last5']:.2f}, KL {r['kl_k3_last5']:.2f}, "
              f"clip {r['clip_frac']:.3f}, ratio's gap {r['ratio_behaviour_kl']:.3f} "
              f"({r['ratio_outside_share']:.1%} outside), corrected {r['correction_share']:.1%}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="PPO steps of each learning run")
    parser.add_argument("--seed", type=int, default=7, help="run.seed of every run")
    args = parser.parse_args()
    from cluster import runtime
    from common.config import RayConfig

    runtime.start(RayConfig(num_cpus=8))
    try:
        print("mismatch of the temperature-only π_old to the sampler, first step:", flush=True)
        found = {"mismatch": mismatch(args.seed)}
        print(f"learning, keyword task, GRPO 8 × 4, {args.steps} steps, seed {args.seed}:", flush=True)
        found["learning"] = learning(args.steps, args.seed)
    finally:
        runtime.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "rollout_correction.json"
    path.write_text(json.dumps({"seed": args.seed, "steps": args.steps, **found}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
