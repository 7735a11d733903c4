"""Supervised fine-tuning on Ray Train + DeepSpeed ZeRO (full, LoRA or QLoRA).

    python -m jobs.sft --config configs/tiny-cpu.yaml [section.key=value ...]
    ray job submit --working-dir . -- python -m jobs.sft --config configs/tiny-cpu.yaml

Outputs in <run.output_root>/<run.name>/sft/: metrics.jsonl/.csv, tensorboard/, loss.png, the merged
Hugging Face model in model/, and Ray Train checkpoints under ray_train/ (re-running resumes from them).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from common.config import Config, resolve_path, sft_learning_rate
from jobs import cli

log = logging.getLogger("rayalign.sft")
SECTIONS = ("run", "ray", "model", "lora", "deepspeed", "data", "sft")


@dataclass(frozen=True)
class SFTResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    final_metrics: dict


def prepare(cfg: Config):
    """Driver-side work that should fail fast: model folder, tokenizer, data rows, learning rate."""
    from actors import modeling
    from actors.sft_data import build_split
    from common.model_sizes import parameter_count_on_disk
    from common.records import read_many

    cfg.check_stage("sft")
    tokenizer = modeling.load_tokenizer(cfg.model.path, cfg.model.chat_template)
    records = read_many(cfg.data.train_files, cfg.data.max_records)
    split = build_split(records, tokenizer, cfg.data.max_length, cfg.data.eval_fraction, cfg.run.seed)
    size_b = cfg.model.size_b or parameter_count_on_disk(cfg.model.path) / 1e9
    global_batch = cfg.sft.micro_batch_size * cfg.sft.grad_accum * cfg.sft.num_workers
    lr = sft_learning_rate(size_b, cfg.sft.lr, global_batch, cfg.sft.lr_by_size, cfg.sft.lr_reference_batch)
    log.info("SFT data: %d train / %d eval chats (%d without assistant tokens dropped); model %.2e B params; "
             "lr %.3g%s", len(split.train), len(split.eval), split.dropped_no_assistant, size_b, lr,
             "" if cfg.sft.lr is None else " (explicit)")
    return tokenizer, split, lr


def run(cfg: Config) -> SFTResult:
    import ray

    from actors.sft_worker import train_loop
    from actors.train_driver import fit
    from actors.zero_trainer import TrainingSetup
    from cluster import runtime
    from common.metrics import read_jsonl
    from jobs.plots import plot_curves

    tokenizer, split, lr = prepare(cfg)
    output_dir = cfg.run.output_dir("sft")
    output_dir.mkdir(parents=True, exist_ok=True)
    cluster = runtime.start(cfg.ray, ray_train=True)
    payload = {"setup": TrainingSetup.of(cfg, "sft"), "split_ref": ray.put(split), "pad_id": tokenizer.pad_token_id,
               "lr": lr, "output_dir": str(output_dir), "tokenizer_path": str(resolve_path(cfg.model.path))}
    final = fit(train_loop, payload, cfg.sft, output_dir, "sft", cluster)
    with cli.cluster_winding_down(cluster):  # the figure reads only files
        plot_curves(read_jsonl(output_dir / "metrics.jsonl"), ["loss", "eval_loss", "lr", "grad_norm", "tokens_per_s"],
                    output_dir / "loss.png", f"SFT {cfg.run.name}")
    model_dir = Path(final["exported"]) if final.get("exported") else None
    log.info("SFT done: %d steps, final loss %.4f, eval loss %s; model: %s", final["step"], final.get("loss", 0.0),
             final.get("eval_loss", "none (no held-out chats)"), model_dir)
    return SFTResult(output_dir, model_dir, final["step"], final)


def main(argv: list[str] | None = None) -> SFTResult:
    cfg, _ = cli.parse("python -m jobs.sft", __doc__.split("\n\n")[0], SECTIONS, argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.sft", main))
