"""rayalign vs TRL 1.16 on identical work, each side run end to end as a user runs it, all in one run. Not a test.

    .venv/bin/python bench/peers.py [--only grpo,sft,dpo] [--sizes 0.4M,25M] [--steps N] [--repeat N] [--out PATH]
                                    [--workdir DIR]

Every run is a subprocess started and timed from here, one after another (never two at once): `python -m jobs.<x>
--config configs/tiny-cpu.yaml ...` for rayalign, `python bench/peer_models.py <x> ...` for TRL (single process,
Hugging Face generation on CPU: TRL's vLLM mode fails on the CPU build). End-to-end wall counts everything from
process start to exit: imports, Ray and its roles, model and data loading, training, evaluation. Seconds per step
are the mean over steps 2..n (rayalign's `time/step` for GRPO, `step_seconds` for SFT/DPO; TRL's optimizer steps
timed from on_step_begin to on_step_end, summed over each generation's 4 updates for GRPO).

1. GRPO at 0.4M parameters (stories260K-hd32) and 25.6M (a random Llama built in code with that tokenizer);
   rayalign runs as configured (packed sequences with shared prompts, lock-step), then without sharing, padded
   and with async rollouts (--grpo-variants), each against the same TRL run. On the lent GPU machine
   (tests/gpu/device_run.sh peers): `--device cuda --sizes qwen0.5B`, Qwen2-0.5B's body, both sides on the GPU.
2. SFT: jobs.sft with the recipe's 2 workers, and with 1 worker, vs SFTTrainer; trained (assistant) tokens/s.
3. DPO: jobs.dpo (2 workers) vs DPOTrainer.
What each comparison matches, and what it cannot, is in its compare_* docstring; bench/peer_models.py maps the
same config onto TRL's arguments. Speed ratio = TRL seconds / rayalign seconds (above 1: rayalign is faster).
Checkpoints and model export are off on both sides (TRL saves nothing either). Writes bench/results/peers.json,
replacing only the sections this run measured (each stamped with its command, date and load average).

--repeat N runs each comparison N times, TRL first in every other round so that a drift of the machine's speed
within the run (this machine swings by 10-25% between runs of one hour) falls on both sides alike, and reports each
ratio's median and range over the rounds; the section keeps the first round's figures and adds every round's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.peer_models import QWEN2_05B_BODY  # noqa: E402  (the repository root is on the path only now)

RECIPE = REPO / "configs" / "tiny-cpu.yaml"
RESULTS = REPO / "bench" / "results"
PEER = REPO / "bench" / "peer_models.py"
NEVER = 10**6  # a checkpoint cadence no run reaches
PROMPTS, ANSWERS, NEW_TOKENS = 8, 4, 24  # per GRPO step: 8 prompts x 4 answers of up to 24 new tokens
# rayalign's side of GRPO, each run against the same TRL run: as configured (default: packed sequences with shared
# prompts, lock-step), without sharing (what sharing saves), with padded batches (what packing saves), and with async
# rollouts (one-step off-policy: a different algorithm, reported beside the matched one, never instead of it).
# The async variant keeps the temperature-only ratio the matched work uses, so it corrects towards the engine's
# log-probs (tis) rather than taking them as the old policy (which needs trainer_logprobs=processed).
GRPO_VARIANTS = {"default": [], "unshared": ["ppo.share_prompts=false"], "padded": ["ppo.pack_sequences=false"],
                 "async": ["ppo.async_rollouts=1", "ppo.rollout_correction=tis"]}
# GRPO model sizes: the recipe's model, or a random Llama built in code (bench/peer_models.random_llama) with its
# tokenizer. qwen0.5B has Qwen2-0.5B's body at the carried tokenizer's vocabulary (358M parameters), for the lent
# GPU (--device cuda); qwen0.5B-2L is two of its layers (30M): the same layer shape on a CPU in minutes.
SIZES = {"0.4M": None, "25M": dict(hidden=512, layers=8, heads=8, intermediate=1376), "qwen0.5B": QWEN2_05B_BODY,
         "qwen0.5B-2L": {**QWEN2_05B_BODY, "layers": 2}}
# --device cuda: every role on one GPU in fractions (policy, reference and the engine: 3 x 0.25), and the Hugging
# Face engine, since vLLM's CUDA build cannot be carried to the lent machine (../shared/docs/GPU.md); TRL reads
# the same config (bench/peer_models.py) and trains on the GPU too, generating with Hugging Face as it does here.
DEVICE_OVERRIDES = {"cpu": [], "cuda": ["ppo.gpus_per_actor=0.25", "ppo.rollout.engine=hf"]}


def run_logged(cmd: list[str], log: Path) -> float:
    """Wall seconds of `cmd` run from the repository root, its output in `log`; exits with the log's tail on
    failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - started
    if code:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"{' '.join(cmd)}\nexited with {code}; last lines of {log}:\n{tail}")
    return wall


def rayalign(job: str, overrides: list[str], root: Path, name: str) -> tuple[float, list[dict]]:
    """(end-to-end seconds, metrics.jsonl rows) of `python -m jobs.<job>` on the tiny recipe plus `overrides`."""
    from common.metrics import read_jsonl

    cmd = [sys.executable, "-m", f"jobs.{job}", "--config", str(RECIPE), *overrides, f"run.output_root={root}",
           f"run.name={name}"]
    wall = run_logged(cmd, root / f"{name}.log")
    return wall, read_jsonl(root / name / job / "metrics.jsonl")


def trl(kind: str, overrides: list[str], root: Path, name: str, workers: int = 1) -> tuple[float, dict]:
    """(end-to-end seconds, result) of TRL's trainer on the work the same overrides describe (bench/peer_models.py);
    `workers`: the rayalign rank count whose batch order TRL replays."""
    spec, result = root / f"{name}.spec.json", root / f"{name}.result.json"
    spec.write_text(json.dumps({"overrides": overrides, "workers": workers, "output_dir": str(root / name)}))
    wall = run_logged([sys.executable, str(PEER), kind, str(spec), str(result)], root / f"{name}.log")
    return wall, json.loads(result.read_text())


def existing(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(overrides the config schema accepts, those it rejects): for keys that work in progress may add or rename."""
    from common.config import load_config
    from common.errors import ConfigError

    kept, dropped = [], []
    for item in overrides:
        try:
            load_config(RECIPE, [item])
            kept.append(item)
        except ConfigError:
            dropped.append(item)
    return kept, dropped


def after_first(values: list[float]) -> float:
    return statistics.fmean(values[1:]) if len(values) > 1 else values[0]


def speed(ray: dict, peer: dict, key: str) -> float:
    return peer[key] / ray[key]


def grpo_side(wall: float, steps: list[dict], optimizer_steps: int) -> dict:
    """One side's GRPO figures from its steps ({seconds, reward, tokens} each)."""
    rewards = [s["reward"] for s in steps]
    head = min(5, len(rewards))
    return {"wall_s": wall, "step_s": after_first([s["seconds"] for s in steps]), "optimizer_steps": optimizer_steps,
            "reward_first5": statistics.fmean(rewards[:head]), "reward_last5": statistics.fmean(rewards[-head:]),
            "generated_tokens": sum(s["tokens"] for s in steps), "per_step": steps}


def check_overrides(overrides: list[str]) -> None:
    from common.config import load_config

    load_config(RECIPE, overrides)  # a bad override raises ConfigError here, before any run starts


# ---- 1. GRPO -------------------------------------------------------------------------------------------------
def grpo_overrides(steps: int, model_path: str) -> tuple[list[str], list[str]]:
    """rayalign's side of the GRPO work; TRL's arguments are read from the same config (peer_models.trl_grpo)."""
    fixed = [f"ppo.steps={steps}", f"ppo.max_prompts={steps * PROMPTS}", f"ppo.rollout_batch_size={PROMPTS}",
             f"ppo.samples_per_prompt={ANSWERS}", "ppo.mini_batch_size=16", "ppo.ppo_epochs=2",
             "ppo.advantage_estimator=grpo", f"ppo.rollout.max_new_tokens={NEW_TOKENS}",
             "ppo.rollout.max_prompt_tokens=128",
             "ppo.rollout.temperature=0.7", "ppo.rollout.top_p=0.9", "ppo.rollout.repetition_penalty=1.2",
             "ppo.kl.controller=fixed", "ppo.kl.coef=0.05", "ppo.kl.mode=loss", "ppo.kl.estimator=k3",
             "ppo.reward.rm_source=keyword", "ppo.reward.enabled_terms=[rm,kl]", "ppo.reward.rm_weight=1.0",
             "ppo.reward.kl_weight=0.2", "ppo.monitor.enabled=false", "ppo.report_prompts=[]",
             f"ppo.save_every={NEVER}", "ppo.export=false", f"model.path={model_path}"]
    optional, dropped = existing(["ppo.trainer_logprobs=temperature", "ppo.loss_aggregation=token-mean",
                                  "ppo.rollout_correction=none"])
    return fixed + optional, dropped


def compare_grpo(size: str, steps: int, root: Path, variants: list[str], peer_first: bool = False,
                 device: str = "cpu") -> dict:
    """GRPO, identical work: the first 8 x steps prompts of rayalign's default PPO prompt file, taken in the order
    rayalign's steps pick them, through its DEFAULT_CHAT_TEMPLATE (the token ids are checked equal; prompts up to
    128 tokens so none is cut); sampling at temperature 0.7, top_p 0.9, repetition penalty 1.2, top_k off; 8 prompts
    x 4 answers of up to 24 new tokens (both stop at EOS) per step; 2 passes of 16-sequence mini-batches = 4
    optimizer steps per step; (R - group mean) / (group std + 1e-4) advantages on the keyword reward ("happy"
    counted, capped at 5) with no other reward term; clipped ratio (0.2) under logits / temperature, token mean per
    mini-batch; KL to the reference in the loss, k3, coefficient 0.05, no importance weight; AdamW (0.9, 0.95) at the
    recipe's ppo.lr, constant; clipping at ppo.max_grad_norm; fp32; the old log-probs and the reference's taken in
    a forward pass of their own on both sides. Not matched: the samplers' random streams (vLLM vs torch), so rewards
    and generated token counts agree in distribution only; which sequences share a mini-batch (rayalign reshuffles
    for its second pass, TRL keeps one split); rayalign's health monitors are off (their raise_kl action would
    change the KL coefficient); rayalign writes a checkpoint at its last step."""
    from common.model_sizes import parameter_count_on_disk
    from bench.peer_models import random_llama
    from common.config import load_config, resolve_path

    model_path = str(resolve_path(load_config(RECIPE).model.path))
    if SIZES[size]:
        folder = root / f"model-{size}"
        random_llama(folder, model_path, **SIZES[size])
        model_path = str(folder)
    params = parameter_count_on_disk(model_path)
    overrides, dropped = grpo_overrides(steps, model_path)
    overrides += DEVICE_OVERRIDES[device]
    check_overrides(overrides)
    seqs = PROMPTS * ANSWERS
    peer_run = (lambda: trl("grpo", overrides, root, f"grpo-{size}-trl"))
    peer_wall, result = peer_run() if peer_first else (None, None)
    sides = {name: rayalign_grpo(overrides + GRPO_VARIANTS[name], root, f"grpo-{size}-rayalign-{name}", seqs)
             for name in variants}
    ray = sides[variants[0]]
    if not peer_first:
        peer_wall, result = peer_run()
    peer = grpo_side(peer_wall, result["steps"], result["optimizer_steps"])
    peer.update(prompt_ids_match_rayalign=result["prompt_ids_match_rayalign"], beta=result["beta"])
    for side in sides.values():
        side.update(speed_end_to_end=speed(side, peer, "wall_s"), speed_per_step=speed(side, peer, "step_s"))
    out = {"params": params, "device": device, "steps": steps, "sequences_per_step": seqs, "max_new_tokens": NEW_TOKENS,
           "overrides": overrides, "not_in_config": dropped, "rayalign": ray, "trl": peer,
           "speed_end_to_end": speed(ray, peer, "wall_s"), "speed_per_step": speed(ray, peer, "step_s"),
           "variants": {name: {"overrides": GRPO_VARIANTS[name], **side} for name, side in sides.items()}}
    print(f"\nGRPO {size} ({params / 1e6:.2f}M params, {device}): {steps} steps x {seqs} sequences x <= {NEW_TOKENS} "
          f"new tokens, 4 optimizer steps per step{'; config lacks ' + ', '.join(dropped) if dropped else ''}")
    print(f"  {'':<18}{'end to end':>11}{'s/step':>9}{'reward first5 -> last5':>25}{'gen tokens':>12}{'opt steps':>11}")
    for label, side in [(f"rayalign {name}", side) for name, side in sides.items()] + [("TRL", peer)]:
        print(f"  {label:<18}{side['wall_s']:>10.1f}s{side['step_s']:>9.2f}{side['reward_first5']:>15.3f} -> "
              f"{side['reward_last5']:<6.3f}{side['generated_tokens']:>12,.0f}{side['optimizer_steps']:>11}")
    for name, side in sides.items():
        print(f"  rayalign {name} phases (s, steps 2..n): " +
              ", ".join(f"{k} {v:.2f}" for k, v in side["phases_s"].items() if v >= 0.005))
    print(f"  prompt ids identical on both sides: {peer['prompt_ids_match_rayalign']}; TRL beta {peer['beta']:g}")
    for name, side in sides.items():
        print(f"  rayalign {name} / TRL speed: {side['speed_end_to_end']:.2f}x end to end, "
              f"{side['speed_per_step']:.2f}x per step")
    return out


def rayalign_grpo(overrides: list[str], root: Path, name: str, seqs: int) -> dict:
    """One rayalign GRPO run's figures, with the mean seconds of each phase over steps 2..n."""
    wall, rows = rayalign("ppo", overrides, root, name)
    steps = [{"seconds": r["time/step"], "reward": r["reward/rm_mean"], "tokens": r["response_tokens_mean"] * seqs,
              "phases": {k[5:]: v for k, v in r.items() if k.startswith("time/") and k != "time/step"}}
             for r in rows]
    side = grpo_side(wall, steps, sum(r.get("policy/updates", 0) for r in rows))
    side["phases_s"] = {k: after_first([s["phases"][k] for s in steps]) for k in steps[0]["phases"]}
    return side


# ---- 2. SFT --------------------------------------------------------------------------------------------------
def training_side(wall: float, rows: list[dict], unit: str) -> dict:
    """Figures of one rayalign SFT/DPO run from its metrics rows (step rows carry step_seconds, eval rows eval_*)."""
    steps = [r for r in rows if "step_seconds" in r]
    evals = [{k: v for k, v in r.items() if k.startswith("eval_")} for r in rows if "eval_loss" in r]
    seconds = [r["step_seconds"] for r in steps]
    units = [r[f"{unit}_per_s"] * r["step_seconds"] for r in steps]
    return {"wall_s": wall, "step_s": after_first(seconds), "optimizer_steps": len(steps),
            f"{unit}_per_s": sum(units[1:]) / sum(seconds[1:]) if len(steps) > 1 else units[0] / seconds[0],
            "final_loss": steps[-1]["loss"], "eval_start": evals[0], "eval_end": evals[-1]}


def trl_training_side(wall: float, result: dict, unit: str, per_step: list[float]) -> dict:
    """The same figures from TRL's step times, log history and `per_step` units (tokens or pairs per step)."""
    seconds = result["step_seconds"]
    log = result["log"]
    losses = [r["loss"] for r in log if "loss" in r]
    evals = [{k: v for k, v in r.items() if k.startswith("eval_")} for r in log if "eval_loss" in r]
    return {"wall_s": wall, "step_s": after_first(seconds), "optimizer_steps": result["optimizer_steps"],
            f"{unit}_per_s": sum(per_step[1:]) / sum(seconds[1:]) if len(seconds) > 1 else per_step[0] / seconds[0],
            "final_loss": losses[-1], "eval_start": evals[0], "eval_end": evals[-1]}


def compare_sft(steps: int, root: Path, peer_first: bool = False) -> dict:
    """SFT on the recipe's data (llms-from-scratch instructions, 600 records, 5% held out, max_length 192), the
    same tokenized chats with the loss on assistant tokens only, 16 chats per optimizer step in micro-batches of 8
    (rayalign: 2 workers x 8, or 1 worker x 8 x 2 accumulation; TRL: 8 x 2 accumulation), in the order rayalign's
    2 ranks take them (length-bucketed); loss = mean over the step's trained tokens; sft.lr with the same cosine
    schedule and warm-up steps, clipping 1.0, AdamW (0.9, 0.95); held-out loss at step 0, every sft.eval_every
    steps and at the end (TRL in one batch, so both take the token mean). Throughput = trained tokens / step seconds
    over steps 2..n. Not matched: TRL also computes per-token entropy and accuracy for its logs (its own overhead);
    the 1-worker run takes its chats in its own bucketed order."""
    base = [f"sft.max_steps={steps}", f"sft.save_every={NEVER}", "sft.export=false"]
    check_overrides(base)
    out = {"steps": steps, "sequences_per_step": 16}
    runs = {"rayalign_2_workers": base + ["sft.num_workers=2", "sft.grad_accum=1"],
            "rayalign_1_worker": base + ["sft.num_workers=1", "sft.grad_accum=2"]}
    peer_run = (lambda: trl("sft", runs["rayalign_2_workers"], root, "sft-trl", workers=2))
    peer_wall, result = peer_run() if peer_first else (None, None)
    for label, overrides in runs.items():
        out[label] = training_side(*rayalign("sft", overrides, root, f"sft-{label}"), "tokens")
    if not peer_first:
        peer_wall, result = peer_run()
    out["trl"] = trl_training_side(peer_wall, result, "tokens", result["step_tokens"])
    print(f"\nSFT: {steps} steps x 16 chats (max_length 192), assistant-only loss")
    print_training(out, "tokens", "eval_loss", ("eval_loss",))
    return out


# ---- 3. DPO --------------------------------------------------------------------------------------------------
def compare_dpo(steps: int, root: Path, peer_first: bool = False) -> dict:
    """DPO on the recipe's pairs (llms-from-scratch preference file, 10% held out, max_length 192): the same
    encoded pairs (prompt tokens, chosen and rejected reply tokens) in the order rayalign's 2 ranks take them, 16
    pairs per optimizer step in micro-batches of 8, sigmoid loss with beta 0.1, reference log-probs computed once
    before training for every train and held-out pair, dpo.lr with the same cosine schedule and warm-up, clipping
    1.0, AdamW (0.9, 0.95); held-out implicit-reward accuracy at step 0, every dpo.eval_every steps and at the end.
    Not matched: rayalign drops pairs whose two replies encode identically (TRL would keep them; they are not in
    either side's data here); the 1-worker run (8 pairs x 2 accumulation) takes its pairs in its own order."""
    overrides = [f"dpo.max_steps={steps}", f"dpo.save_every={NEVER}", "dpo.export=false"]
    check_overrides(overrides)
    out = {"steps": steps, "pairs_per_step": 16}
    peer_run = (lambda: trl("dpo", overrides, root, "dpo-trl", workers=2))
    peer_wall, result = peer_run() if peer_first else (None, None)
    out["rayalign_2_workers"] = training_side(*rayalign("dpo", overrides, root, "dpo-rayalign"), "pairs")
    one = overrides + ["dpo.num_workers=1", "dpo.grad_accum=2"]  # the plain engine; its own pair order
    out["rayalign_1_worker"] = training_side(*rayalign("dpo", one, root, "dpo-rayalign-1"), "pairs")
    if not peer_first:
        peer_wall, result = peer_run()
    pairs = [result["pairs_per_step"]] * len(result["step_seconds"])
    out["trl"] = trl_training_side(peer_wall, result, "pairs", pairs)
    print(f"\nDPO: {steps} steps x 16 pairs (max_length 192), beta 0.1")
    print_training(out, "pairs", "held-out acc", ("eval_reward_accuracy", "eval_rewards/accuracies"))
    return out


def print_training(out: dict, unit: str, eval_label: str, eval_keys: tuple[str, ...]) -> None:
    """A table of the rayalign runs and TRL, then each rayalign run's speed relative to TRL."""
    def held_out(evaluation: dict) -> float:
        return next((evaluation[k] for k in eval_keys if k in evaluation), float("nan"))

    sides = {k: v for k, v in out.items() if k.startswith("rayalign") or k == "trl"}
    print(f"  {'':<20}{'end to end':>11}{'s/step':>9}{unit + '/s':>11}{'final loss':>12}"
          f"{eval_label + ' start -> end':>26}")
    for label, side in sides.items():
        print(f"  {label:<20}{side['wall_s']:>10.1f}s{side['step_s']:>9.3f}{side[f'{unit}_per_s']:>11,.0f}"
              f"{side['final_loss']:>12.4f}{held_out(side['eval_start']):>16.4f} -> {held_out(side['eval_end']):.4f}")
    for label, side in sides.items():
        if label != "trl":
            side["speed_end_to_end"] = speed(side, out["trl"], "wall_s")
            side["speed_throughput"] = side[f"{unit}_per_s"] / out["trl"][f"{unit}_per_s"]
            print(f"  {label} / TRL: {side['speed_end_to_end']:.2f}x end to end, {side['speed_throughput']:.2f}x "
                  f"{unit}/s")


# ---- repeated rounds ------------------------------------------------------------------------------------------
GRPO_RATIOS = {"end to end": ("speed_end_to_end",), "per step": ("speed_per_step",)}
TRAINING_RATIOS = {f"{label} {kind}": (side, key) for side, label in (("rayalign_2_workers", "2 workers"),
                                                                      ("rayalign_1_worker", "1 worker"))
                   for kind, key in (("throughput", "speed_throughput"), ("end to end", "speed_end_to_end"))}


def repeated(name: str, measure: Callable[[bool, Path], dict], repeat: int, ratios: dict[str, tuple[str, ...]],
             root: Path) -> dict:
    """The first of `repeat` rounds of `measure(peer_first, folder)` (TRL first in every other round; each round in
    a folder of its own, since a rayalign job re-run in the same output folder resumes from its last checkpoint),
    with every round's `ratios` (each a key path into a round's section) and each ratio's median, mean and range."""
    rounds = []
    for index in range(repeat):
        folder = root / f"round-{index + 1}" if index else root
        folder.mkdir(parents=True, exist_ok=True)
        rounds.append(measure(bool(index % 2), folder))
    section = rounds[0]
    if repeat == 1:
        return section

    def dig(values: dict, path: tuple[str, ...]) -> float:
        for key in path:
            values = values[key]
        return values

    section["rounds"] = [{label: dig(one, path) for label, path in ratios.items()} | {"peer_first": bool(index % 2)}
                         for index, one in enumerate(rounds)]
    section["summary"] = {label: spread([dig(one, path) for one in rounds]) for label, path in ratios.items()}
    print(f"\n{name}, {repeat} rounds (TRL first in every other one): rayalign / TRL speed")
    for label, figures in section["summary"].items():
        print(f"  {label:<24} median {figures['median']:.2f}x, mean {figures['mean']:.2f}x, "
              f"range {figures['min']:.2f}-{figures['max']:.2f}x")
    return section


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "mean": statistics.fmean(values), "min": min(values),
            "max": max(values), "values": values}


def merged(path: Path, results: dict) -> dict:
    """The results file with this run's comparisons replacing their own sections (GRPO per size) and the others
    kept, each section carrying the machine's load average and the command of the run that measured it."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    for stale in ("load_average_at_start", "dpo_run"):  # whole-file stamps of older runs: now per section
        old.pop(stale, None)
    command = "python bench/peers.py " + " ".join(sys.argv[1:])
    stamp = {"load_average_at_start": results["load_average_at_start"], "command": command,
             "date": time.strftime("%Y-%m-%d")}
    for key in ("grpo", "sft", "dpo"):
        if key not in results:
            continue
        parts = results[key].items() if key == "grpo" else [(None, results[key])]
        for size, section in parts:
            section["measured"] = stamp
            if size is None:
                old[key] = section
            else:
                old.setdefault(key, {})[size] = section
    return {**old, "machine": results["machine"], "warm_imports_s": results["warm_imports_s"]}


def warm_file_cache(device: str) -> float:
    """Import both stacks once, untimed, so the first timed run does not pay for reading them from disk (no vLLM
    on the GPU machine: DEVICE_OVERRIDES)."""
    started = time.perf_counter()
    stacks = "torch, transformers, trl, ray, deepspeed" + (", vllm" if device == "cpu" else "")
    subprocess.run([sys.executable, "-c", f"import {stacks}"], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def machine(device: str) -> str:
    if device == "cpu":
        return f"{os.cpu_count()} CPUs"
    import torch

    return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="grpo,sft,dpo", help="comparisons to run, comma-separated")
    parser.add_argument("--sizes", default="0.4M,25M", help="GRPO model sizes: 0.4M (stories260K-hd32), 25M (random "
                                                             "Llama built here), qwen0.5B (Qwen2-0.5B's body, for a "
                                                             "GPU), qwen0.5B-2L (two of its layers)")
    parser.add_argument("--device", choices=sorted(DEVICE_OVERRIDES), default="cpu",
                        help="where both sides run GRPO: cpu, or cuda (one GPU shared by every role, Hugging Face "
                             "generation on both sides; SFT and DPO stay on the CPU recipe)")
    parser.add_argument("--grpo-variants", default="default,unshared,padded,async",
                        help="rayalign GRPO runs against the one TRL run, the first one the headline "
                             f"({', '.join(GRPO_VARIANTS)})")
    parser.add_argument("--steps", type=int, default=None, help="steps of every run (default: GRPO 20, SFT/DPO 30)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of each comparison, TRL first in every other one; the ratios' median and range "
                             "over them are printed and saved")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json",
                        help="results JSON; only the sections this run measured are replaced")
    parser.add_argument("--workdir", type=Path, help="keep every run's log and outputs here (default: a temp folder)")
    args = parser.parse_args()
    only, sizes = set(args.only.split(",")), args.sizes.split(",")
    variants = args.grpo_variants.split(",")
    unknown = sorted(only - {"grpo", "sft", "dpo"}) + [size for size in sizes if size not in SIZES] + \
        [name for name in variants if name not in GRPO_VARIANTS]
    if unknown:
        parser.error(f"unknown comparison or size: {', '.join(unknown)}")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    # Other work on the machine moves every figure: the load average is recorded next to them.
    results = {"machine": machine(args.device), "load_average_at_start": os.getloadavg(),
               "warm_imports_s": warm_file_cache(args.device)}
    print(f"{results['machine']}, load average {results['load_average_at_start'][0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if "grpo" in only:
            results["grpo"] = {size: repeated(f"GRPO {size}", lambda peer_first, folder, size=size: compare_grpo(
                size, args.steps or 20, folder, variants, peer_first, args.device), args.repeat, GRPO_RATIOS, root)
                for size in sizes}
        if "sft" in only:
            results["sft"] = repeated("SFT", lambda peer_first, folder: compare_sft(
                args.steps or 30, folder, peer_first), args.repeat, TRAINING_RATIOS, root)
        if "dpo" in only:
            results["dpo"] = repeated("DPO", lambda peer_first, folder: compare_dpo(
                args.steps or 30, folder, peer_first), args.repeat, TRAINING_RATIOS, root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged(args.out, results), indent=2, default=float))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
