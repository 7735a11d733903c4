"""GPU benchmarks at the Qwen2-0.5B shape (random weights, built in code: nothing comes from a hub).

    python bench/gpu_qwen_shape.py                       # on the CUDA machine: all three sections
    python bench/gpu_qwen_shape.py --sections train      # one section
    python bench/gpu_qwen_shape.py --smoke               # tiny shapes, CPU allowed: checks the script runs

Sections (each prints one table; all results go to one JSON under bench/results/):
  train    tokens/s and MFU of one training step (forward, backward, AdamW) at batch × seq, for the plain eager
           PyTorch baseline and for rayalign's training step (SDPA attention, chunked fused cross-entropy,
           fused AdamW, optional regional torch.compile, and the SFT job's DeepSpeed ZeRO-2 bf16 engine);
  forward  the PPO scoring phases: policy / reference log-probs (actors/policy.sequence_logprobs) and value
           estimates (actors/value.action_values) in tokens/s, against a plain eager forward + log_softmax;
  sync     weight gather + transfer time vs parameter count (actors/weights.hf_named_weights, the path the
           PPO weight sync and export take), as a fraction of the memory-bandwidth limit.

MFU = 6 · N · tokens/s / peak, N = parameters that take part in matrix products (the tied embedding counted
once, as the output projection), peak = 989.4 TFLOP/s (H100 SXM bf16 dense). The same formula gives the
76k tok/s ≈ 23 % baseline quoted in issue 10. Timing: CUDA synchronisation around each step, warm-up steps
first, the median of the timed steps. Absolute figures only compare on the same card.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                 tie_word_embeddings=True, rms_norm_eps=1e-6)


def qwen_model(args, attn: str, **overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(QWEN2_05B, **overrides)
    if args.smoke:
        shape.update(vocab_size=2048, num_hidden_layers=2)
    config = Qwen2Config(**shape, attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen2ForCausalLM(config).to(args.dtype)
    return model


def matmul_params(model) -> int:
    """Parameters used in matrix products: all but norms; a tied embedding counts once (as lm_head)."""
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or p.dim() < 2:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, args) -> list[float]:
    for _ in range(args.warmup):
        fn()
    times = []
    for _ in range(args.steps):
        sync(args.device)
        start = time.perf_counter()
        fn()
        sync(args.device)
        times.append(time.perf_counter() - start)
    return times


def release_memory() -> None:
    """Return freed CUDA memory to the card. Callers `del` their own references first: a model a caller still
    names stays allocated and would count in the next variant's peak memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_batch(args, vocab: int) -> dict:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(args.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


# ---- train ------------------------------------------------------------------------------------------------
def baseline_step(args):
    """Plain eager PyTorch: the model as Transformers builds it (SDPA attention, its own loss on the full
    logits), default AdamW, no compile, no DeepSpeed."""
    model = qwen_model(args, "sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = random_batch(args, model.config.vocab_size)

    def step():
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def rayalign_step(args, compile_layers: bool, chunk: int = 4096):
    """rayalign's step outside DeepSpeed: SDPA, fused chunked cross-entropy, fused AdamW (zero.adamw)."""
    from actors import modeling, zero
    from actors.sft_worker import causal_lm_loss_sums
    from common.config import DeepSpeedConfig

    model = qwen_model(args, "sdpa")
    if compile_layers:
        modeling.compile_decoder_layers(model)
    optimizer = zero.adamw(model.parameters(), 1e-5, 0.0, DeepSpeedConfig())
    batch = random_batch(args, model.config.vocab_size)

    def step():
        total, tokens = causal_lm_loss_sums(model, batch, fused=True, chunk_size=chunk)
        (total / tokens).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def deepspeed_step(args, compile_layers: bool, stage: int = 2, clip: float = 1.0, zero_extra: dict | None = None,
                   autocast: bool = False):
    """The SFT job's engine: DeepSpeed ZeRO bf16 (fp32 master weights in the optimizer), single rank."""
    from actors import modeling, zero
    from actors.sft_worker import causal_lm_loss_sums
    from common.config import DeepSpeedConfig

    init_single_rank()
    model = qwen_model(args, "sdpa")
    if compile_layers:
        modeling.compile_decoder_layers(model)
    cfg = DeepSpeedConfig(stage=stage, precision="fp32" if autocast else "bf16")
    if autocast:  # fp32 parameters, bf16 matmuls under torch.autocast (DeepSpeed's torch_autocast mode)
        model.float()
    optimizer = zero.adamw([p for p in model.parameters()], 1e-5, 0.0, cfg)
    config = zero.ds_config(cfg, args.batch, 1, clip, 1)
    config["zero_optimization"].update(zero_extra or {})
    if autocast:
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    engine = zero.initialize(model, optimizer, None, config)
    batch = random_batch(args, model.config.vocab_size)

    def step():
        total, tokens = causal_lm_loss_sums(engine, batch, fused=True)
        engine.backward(total / tokens)
        engine.step()

    return engine, step


def profile(step, args, name: str) -> None:
    """The 20 costliest GPU kernels of two steps (what to speed up next), printed and written to a file."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        sync(args.device)
    table = prof.key_averages().table(sort_by=args.profile_sort,
                                      row_limit=20, max_name_column_width=60)
    print(f"profile of {name}:\n{table}", flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "profile.txt").write_text(f"{name}\n{table}")


def init_single_rank() -> None:
    if torch.distributed.is_initialized():
        return
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from actors import zero

    zero.init_distributed()


def bench_train(args) -> list[dict]:
    variants = {
        "baseline": ("eager baseline", lambda: baseline_step(args)),
        "step": ("rayalign step", lambda: rayalign_step(args, False)),
        "compile": ("rayalign step + compile", lambda: rayalign_step(args, True)),
        "compile-chunk8k": ("rayalign step + compile, loss chunk 8192", lambda: rayalign_step(args, True, 8192)),
        "ds2": ("SFT engine: DeepSpeed ZeRO-2 bf16 + compile", lambda: deepspeed_step(args, True)),
        "ds1": ("SFT engine: DeepSpeed ZeRO-1 bf16 + compile", lambda: deepspeed_step(args, True, stage=1)),
        "ds0": ("SFT engine: DeepSpeed ZeRO-0 bf16 + compile", lambda: deepspeed_step(args, True, stage=0)),
        "ds2-noclip": ("DeepSpeed ZeRO-2 bf16 + compile, no clipping", lambda: deepspeed_step(args, True, clip=0.0)),
        "ds2-overlap": ("DeepSpeed ZeRO-2 bf16 + compile, overlap_comm", lambda: deepspeed_step(
            args, True, zero_extra={"overlap_comm": True})),
        "ds2-bigbucket": ("DeepSpeed ZeRO-2 bf16 + compile, 2e9 buckets, no contiguous grads", lambda: deepspeed_step(
            args, True, zero_extra={"reduce_bucket_size": int(2e9), "allgather_bucket_size": int(2e9),
                                    "contiguous_gradients": False})),
        "ds2-noncontiguous": ("DeepSpeed ZeRO-2 bf16 + compile, no contiguous grads", lambda: deepspeed_step(
            args, True, zero_extra={"contiguous_gradients": False})),
        "ds2-autocast": ("DeepSpeed ZeRO-2 torch_autocast bf16 (fp32 params) + compile", lambda: deepspeed_step(
            args, True, autocast=True)),
        "ds2-nocompile": ("DeepSpeed ZeRO-2 bf16, no compile", lambda: deepspeed_step(args, False)),
    }
    variants = dict(variants[key] for key in args.variants.split(","))
    if args.no_compile:
        variants = {k: v for k, v in variants.items() if "compile" not in k}
    rows = []
    for name, make in variants.items():
        try:
            model, step = make()
            n = matmul_params(getattr(model, "module", model))
            times = timed(step, args)
            if args.profile and args.profile in name:
                profile(step, args, name)
        except Exception as exc:  # one variant failing (e.g. compile) must not hide the others' figures
            print(f"  {name}: failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            model = step = None
            release_memory()
            continue
        tokens = args.batch * args.seq
        tps = tokens / statistics.median(times)
        row = {"variant": name, "median_s": statistics.median(times), "tokens_per_s": tps, "matmul_params": n,
               "mfu": 6 * n * tps / (args.peak_tflops * 1e12),
               "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
        rows.append(row)
        print(f"  {name:45s} {tps:>10,.0f} tok/s  MFU {100 * row['mfu']:5.1f}%", flush=True)
        model = step = None
        release_memory()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    base = next((r for r in rows if r["variant"] == "eager baseline" and "error" not in r), None)
    for row in rows:
        if base and "error" not in row:
            row["vs_baseline"] = row["tokens_per_s"] / base["tokens_per_s"]
    return rows


# ---- forward (PPO scoring phases) -------------------------------------------------------------------------
def bench_forward(args) -> list[dict]:
    from actors.policy import sequence_logprobs
    from actors.protocol import TokenBatch
    from actors.value import ValueModel, action_values

    rows = []
    batch = random_batch(args, 2048 if args.smoke else QWEN2_05B["vocab_size"])
    tokens = args.batch * args.seq
    token_batch = TokenBatch(batch["input_ids"], batch["attention_mask"],
                             torch.ones(args.batch, args.seq - 1, device=args.device))

    eager = qwen_model(args, "eager").eval()

    @torch.no_grad()
    def baseline():
        logits = eager(input_ids=batch["input_ids"]).logits[:, :-1].float()
        return logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])

    rows.append(("eager forward + log_softmax (baseline)", timed(baseline, args)))
    del eager, baseline
    release_memory()
    policy = qwen_model(args, "sdpa").eval()
    rows.append(("policy/reference log-probs (sequence_logprobs)",
                 timed(lambda: sequence_logprobs(policy, token_batch, 1.0), args)))
    value = ValueModel(policy.model, policy.config.hidden_size).to(args.device).eval()
    with torch.no_grad():
        rows.append(("value estimates (action_values)",
                     timed(lambda: action_values(value, batch["input_ids"], batch["attention_mask"]), args)))
    del policy, value
    release_memory()
    out = []
    for name, times in rows:
        tps = tokens / statistics.median(times)
        out.append({"phase": name, "median_s": statistics.median(times), "tokens_per_s": tps})
        print(f"  {name:50s} {tps:>12,.0f} tok/s", flush=True)
    for row in out:
        row["vs_baseline"] = row["tokens_per_s"] / out[0]["tokens_per_s"]
    return out


# ---- sync -------------------------------------------------------------------------------------------------
def bench_sync(args, bandwidth_gbs: float) -> list[dict]:
    """Gather every weight to CPU buckets under HF names (what the policy sends to the rollout engines), then
    load them into a second model on the device (what an engine's load_weights does)."""
    from actors.weights import buckets, hf_named_weights

    rows = []
    shapes = [dict(num_hidden_layers=4), dict(num_hidden_layers=24),
              dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12)]
    if args.smoke:
        shapes = shapes[:1]
    for shape in shapes:
        source = qwen_model(args, "sdpa", **shape)
        target = qwen_model(args, "sdpa", **shape)
        target_params = dict(target.named_parameters())

        def gather_and_load():
            for bucket in buckets(hf_named_weights(source, stage=0), 512 << 20):
                for name, tensor in bucket:
                    if name in target_params:
                        target_params[name].data.copy_(tensor, non_blocking=True)

        def gather_only():
            for _ in buckets(hf_named_weights(source, stage=0), 512 << 20):
                pass

        def gather_pageable():  # the path before pinned staging: one pageable copy per tensor
            for _, p in source.named_parameters():
                p.detach().to("cpu", copy=True)

        def device_copy():  # what a same-GPU hand-over could reach: one on-device copy per tensor
            for name, p in source.named_parameters():
                target_params[name].data.copy_(p)

        n = sum(p.numel() for p in source.parameters())
        nbytes = sum(p.numel() * p.element_size() for p in source.parameters())
        few = argparse.Namespace(**{**vars(args), "steps": min(args.steps, 3), "warmup": 1})  # seconds per run
        full, gathered = statistics.median(timed(gather_and_load, few)), statistics.median(timed(gather_only, few))
        pageable, on_device = statistics.median(timed(gather_pageable, few)), statistics.median(timed(device_copy, few))
        # Memory-bandwidth limit of a weight hand-over: read every byte once and write it once at HBM speed.
        limit_s = 2 * nbytes / (bandwidth_gbs * 1e9)
        row = {"params": n, "bytes": nbytes, "gather_s": gathered, "gather_and_load_s": full,
               "pageable_gather_s": pageable, "on_device_copy_s": on_device,
               "on_device_fraction_of_limit": limit_s / on_device,
               "effective_gb_per_s": nbytes / full / 1e9, "bandwidth_limit_s": limit_s,
               "fraction_of_bandwidth_limit": limit_s / full}
        rows.append(row)
        print(f"  {n / 1e6:8.0f}M params  gather {gathered:7.3f} s  gather+load {full:7.3f} s  "
              f"{row['effective_gb_per_s']:6.2f} GB/s  = {100 * row['fraction_of_bandwidth_limit']:.2f}% of the "
              f"{bandwidth_gbs:.0f} GB/s limit; pageable gather {pageable:.3f} s (×{pageable / gathered:.1f}); "
              f"on-device copy {on_device:.4f} s = {100 * limit_s / on_device:.0f}% of the limit", flush=True)
        del source, target, target_params, gather_and_load, gather_only, gather_pageable, device_copy
        release_memory()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="train,forward,sync", help="comma-separated: train, forward, sync")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator, autotune)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU (default: by card)")
    parser.add_argument("--bandwidth-gbs", type=float, default=3000.0, help="memory bandwidth for the sync limit "
                                                                             "(H100 measured ≈ 3,000 GB/s)")
    parser.add_argument("--variants", default="baseline,step,compile,ds2",
                        help="train variants: baseline, step, compile, compile-chunk8k, ds2, ds1, ds0")
    parser.add_argument("--profile", default=None, help="profile the train variant whose name contains this text")
    parser.add_argument("--profile-sort", default="self_cpu_time_total", help="profiler table order, e.g. "
                        "self_cpu_time_total (host overhead) or cuda_time_total (GPU kernels)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (2 layers, 2k vocab) to check the script")
    parser.add_argument("--out", default="bench/results/gpu_qwen_shape.json", help="where the JSON goes")
    args = parser.parse_args()
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu" and not args.smoke:
        parser.error("no CUDA device here: these figures mean something on a GPU only (use --smoke to check)")
    args.dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    card = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in card), 989.4)
    results = {"card": card, "when": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
               "command": "python " + " ".join(sys.argv), "batch": args.batch, "seq": args.seq,
               "peak_tflops": args.peak_tflops}
    sections = args.sections.split(",")
    print(f"{card}, torch {torch.__version__}, batch {args.batch} × seq {args.seq}", flush=True)
    if "train" in sections:
        print("train step (forward + backward + AdamW):", flush=True)
        results["train"] = bench_train(args)
    if "forward" in sections:
        print("PPO scoring forwards (no grad):", flush=True)
        results["forward"] = bench_forward(args)
    if "sync" in sections:
        print("weight gather + load vs parameter count:", flush=True)
        results["sync"] = bench_sync(args, args.bandwidth_gbs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], out.name).write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
