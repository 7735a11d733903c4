"""SFT training throughput on the tiny model: Ray Train + DeepSpeed ZeRO-2 and ZeRO-3 over 2 ranks vs a
single eager PyTorch process on the same data, batch and sequence length, and ZeRO-2 with packed rows
(data.packing) vs one chat per row. Not a test.

    .venv/bin/python bench/sft_throughput.py [--steps 30]

Tokens/s counts trained (assistant) tokens per optimizer step over all ranks, the median over steps after
the first five (warm-up), read from each run's metrics log; the single process is timed the same way.
Writes bench/results/sft_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def single_process(cfg, steps: int) -> float:
    """Median trained tokens/s of a plain AdamW loop on one process (no Ray, no DeepSpeed)."""
    from actors import modeling
    from actors.sft_data import bucketed_batches, collate
    from actors.sft_worker import causal_lm_loss_sums
    from jobs.sft import prepare

    tokenizer, split, lr = prepare(cfg)
    model = modeling.load_causal_lm(cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    global_batch = cfg.sft.micro_batch_size * cfg.sft.num_workers  # same examples per step as the 2-rank runs
    batches = bucketed_batches(split.train, global_batch, cfg.run.seed, 0)
    rates = []
    for batch in batches[:steps]:
        started = time.perf_counter()
        loss_sum, tokens = causal_lm_loss_sums(model, collate(batch, tokenizer.pad_token_id))
        (loss_sum / tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.sft.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        rates.append(tokens / (time.perf_counter() - started))
    return statistics.median(rates[5:])


def ray_run(cfg, stage: int, steps: int, root: str, packing: bool = False) -> float:
    from common.metrics import read_jsonl
    from jobs.sft import run

    run_cfg = replace(cfg, deepspeed=replace(cfg.deepspeed, stage=stage), data=replace(cfg.data, packing=packing),
                      sft=replace(cfg.sft, max_steps=steps, epochs=100, save_every=10_000, eval_every=10_000,
                                  export=False),
                      run=replace(cfg.run, output_root=root, name=f"zero{stage}{'-packed' if packing else ''}"))
    result = run(run_cfg)
    rates = [r["tokens_per_s"] for r in read_jsonl(result.output_dir / "metrics.jsonl") if "tokens_per_s" in r]
    return statistics.median(rates[5:])


def main() -> None:
    from cluster import runtime
    from common.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml")
    runtime.start(cfg.ray, ray_train=True)  # SFT through Ray Train
    results = {"single_process": single_process(cfg, args.steps)}
    with tempfile.TemporaryDirectory() as root:
        for stage in (2, 3):
            results[f"zero{stage}_2ranks"] = ray_run(cfg, stage, args.steps, root)
        results["zero2_2ranks_packed"] = ray_run(cfg, 2, args.steps, root, packing=True)
    base = results["single_process"]
    print(f"{'setup':<22}{'tokens/s':>12}{'vs single':>11}")
    for name, rate in results.items():
        print(f"{name:<22}{rate:>12,.0f}{rate / base:>10.2f}x")
    print(f"packed rows vs one chat per row (ZeRO-2, 2 ranks): "
          f"{results['zero2_2ranks_packed'] / results['zero2_2ranks']:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sft_throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
