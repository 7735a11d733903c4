"""The host-side cost DeepSpeed's engine adds to one training step, per configuration, against a plain
PyTorch loop (AdamW + gradient clipping) on the same model and batch. Not a test.

    .venv/bin/python bench/deepspeed_overhead.py            # CPU or the first CUDA device, one rank
    .venv/bin/python bench/deepspeed_overhead.py --layers 24 --variants plain,zero2-bf16

Why: on the H100 the SFT engine (ZeRO-2 bf16) ran at 0.5-0.6x a plain compiled step at the Qwen2-0.5B shape
with the CPU twice as busy as the GPU (bench/results/gpu/deepspeed-host-profile-*.log). Host work grows
with the number of parameter tensors, not their size, so a model with Qwen2's 24-layer layout (12 tensors
per layer) but tiny widths shows it on any machine: compute is negligible and what is left is the
framework's own per-tensor work.

Per variant: median step time over the timed steps (after warm-up), torch operators dispatched per step
(counted by torch.profiler, nested ones included; on a GPU most launch a kernel), and scalar reads per step
(aten::_local_scalar_dense, i.e. .item()): on a GPU each read of a device tensor waits for the queue to
drain, while torch's AdamW reads its per-tensor step counters, which live on the CPU, at no such cost.
Writes bench/results/deepspeed_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"

# DeepSpeed's torch_autocast mode: fp32 parameters (no separate master copy), matmuls in bf16 under autocast.
AUTOCAST = {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}
# (stage, precision, zero_optimization extras, top-level config extras)
VARIANTS = {
    "plain": None,
    "plain-engine": "plain-engine",  # rayalign's one-rank engine (deepspeed.single_rank=plain), as the roles build it
    "zero0-fp32": (0, "fp32", {}, {}),
    "zero2-fp32": (2, "fp32", {}, {}),
    "zero3-fp32": (3, "fp32", {}, {}),
    "zero0-bf16": (0, "bf16", {}, {}),
    "zero1-bf16": (1, "bf16", {}, {}),
    "zero2-bf16": (2, "bf16", {}, {}),
    "zero2-bf16-noncontiguous": (2, "bf16", {"contiguous_gradients": False}, {}),
    "zero2-autocast-bf16": (2, "fp32", {}, AUTOCAST),
}


def tiny_qwen(layers: int, device: str):
    """Qwen2's layout (q/k/v with bias, o, gate/up/down, two norms per layer; tied embedding) at tiny widths."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         attn_implementation="sdpa")
    with torch.device(device):
        return Qwen2ForCausalLM(config)


def plain_step(model, batch, clip: float):
    """The baseline: what a hand-written loop does (torch's foreach AdamW and clip_grad_norm_)."""
    from actors.sft_worker import causal_lm_loss_sums

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        total, tokens = causal_lm_loss_sums(model, batch, fused=True)
        (total / tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def plain_engine_step(model, batch, clip: float):
    """actors/plain_engine.py with zero.adamw, as a one-rank PPO role or Ray Train worker builds it."""
    from actors import zero
    from actors.plain_engine import PlainEngine
    from actors.sft_worker import causal_lm_loss_sums
    from common.config import DeepSpeedConfig

    engine = PlainEngine(model, zero.adamw(list(model.parameters()), 1e-5, 0.0, DeepSpeedConfig()), clip)

    def step():
        total, tokens = causal_lm_loss_sums(engine, batch, fused=True)
        engine.backward(total / tokens)
        engine.step()

    return step


def engine_step(model, batch, clip: float, stage: int, precision: str, extra: dict, top: dict):
    """rayalign's engine: zero.ds_config + zero.adamw + zero.initialize, exactly as the trained roles build it."""
    from actors import zero
    from actors.sft_worker import causal_lm_loss_sums
    from common.config import DeepSpeedConfig

    cfg = DeepSpeedConfig(stage=stage, precision=precision)
    optimizer = zero.adamw(list(model.parameters()), 1e-5, 0.0, cfg)
    config = zero.ds_config(cfg, micro_batch=batch["input_ids"].shape[0], grad_accum=1, max_grad_norm=clip,
                            world_size=1)
    config["zero_optimization"].update(extra)
    config.update(top)
    engine = zero.initialize(model, optimizer, None, config)

    def step():
        total, tokens = causal_lm_loss_sums(engine, batch, fused=True)
        engine.backward(total / tokens)
        engine.step()

    return step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(step, device: str, warmup: int, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        sync(device)
    counts = Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})
    return {"median_ms": 1000 * statistics.median(times), "ops_per_step": sum(counts.values()),
            "scalar_reads_per_step": counts["aten::_local_scalar_dense"],
            "op_counts": counts}


def init_single_rank() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29581"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    from actors import zero

    zero.init_distributed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (Qwen2-0.5B has 24)")
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--seq", type=int, default=16, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient clipping max norm (as in SFT)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--out", default=str(RESULTS / "deepspeed_overhead.json"), help="JSON results file")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    init_single_rank()
    ids = torch.randint(0, 256, (args.batch, args.seq), device=device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    rows = {}
    for name in names:
        model = tiny_qwen(args.layers, device)
        spec = VARIANTS[name]
        if spec is None:
            step = plain_step(model, batch, args.clip)
        elif spec == "plain-engine":
            step = plain_engine_step(model, batch, args.clip)
        else:
            step = engine_step(model, batch, args.clip, *spec)
        rows[name] = measure(step, device, args.warmup, args.steps)
        rows[name]["tensors"] = sum(1 for _ in model.parameters())
    base = rows.get("plain")
    print(f"{'variant':<28}{'ms/step':>9}{'vs plain':>10}{'ops/step':>10}{'extra ops':>11}{'item()':>8}")
    for name, row in rows.items():
        ratio = f"{row['median_ms'] / base['median_ms']:.2f}x" if base else "-"
        extra = row["ops_per_step"] - base["ops_per_step"] if base else 0
        print(f"{name:<28}{row['median_ms']:>9.1f}{ratio:>10}{row['ops_per_step']:>10,}{extra:>+11,}"
              f"{row['scalar_reads_per_step']:>8}")
    base_counts = base["op_counts"] if base else Counter()
    for row in rows.values():
        row["most_added_ops"] = dict((row.pop("op_counts") - base_counts).most_common(6))
    if base:
        worst = max(rows, key=lambda n: rows[n]["ops_per_step"])
        print(f"most added by {worst}: " + ", ".join(f"{k.removeprefix('aten::')} +{v}"
                                                     for k, v in rows[worst]["most_added_ops"].items()))
    import deepspeed

    result = {"when": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(0)
              if device == "cuda" else platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "deepspeed": deepspeed.__version__,
              "command": "python bench/deepspeed_overhead.py " + " ".join(sys.argv[1:]),
              "shape": {"layers": args.layers, "batch": args.batch, "seq": args.seq}, "variants": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if os.environ.get("OUT"):  # the lent GPU machine sends back only what is under $OUT
        Path(os.environ["OUT"], Path(args.out).name).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
