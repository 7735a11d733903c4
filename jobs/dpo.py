"""Offline DPO on preference pairs on Ray Train + DeepSpeed ZeRO (full or LoRA), the cheaper alternative to PPO.

    python -m jobs.dpo --config configs/tiny-cpu.yaml [section.key=value ...]
    ray job submit --working-dir . -- python -m jobs.dpo --config configs/tiny-cpu.yaml

The policy starts from model.path (the pipeline passes the SFT model); the reference is that start model
(dpo.reference=copy) or, with LoRA, the policy with its adapters disabled; its log-probs are computed once,
before the first update, and reused every step. The loss variant (sigmoid / cdpo / ipo), beta and cDPO label
smoothing come from the dpo section. Outputs in <run.output_root>/<run.name>/dpo/: report.json (held-out
implicit-reward accuracy at step 0 and at the end, with 95% Wilson intervals), metrics.jsonl/.csv, tensorboard/,
dpo.png, the merged Hugging Face model in model/, and Ray Train checkpoints under ray_train/ (re-running the
same command resumes from them).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import Config, resolve_path
from jobs import cli

if TYPE_CHECKING:
    from actors.dpo_trainer import DPOSplit

log = logging.getLogger("rayalign.dpo")
SECTIONS = ("run", "ray", "model", "lora", "deepspeed", "dpo")
PLOTTED = ["loss", "eval_reward_accuracy", "eval_reward_margin", "eval_chosen_reward", "eval_rejected_reward", "lr"]


@dataclass(frozen=True)
class DPOResult:
    output_dir: Path
    model_dir: Path | None
    steps: int
    final_metrics: dict
    report: dict


def prepare(cfg: Config) -> tuple[object, DPOSplit]:
    """Driver-side work that should fail fast: the config's DPO rules, model folder, tokenizer, preference rows."""
    from actors import modeling
    from actors.dpo_trainer import build_dpo_split
    from common.records import read_many

    cfg.check_stage("dpo")
    tokenizer = modeling.load_tokenizer(cfg.model.path, cfg.model.chat_template)
    records = read_many(cfg.dpo.train_files, cfg.dpo.max_records)
    split = build_dpo_split(records, tokenizer, cfg.dpo.max_length, cfg.dpo.eval_fraction, cfg.run.seed)
    log.info("DPO data: %d train / %d held-out pairs (%d dropped: reply cut by max_length, %d identical); "
             "loss %s, beta %g, reference %s", len(split.train), len(split.eval), split.dropped_truncated,
             split.dropped_identical, cfg.dpo.loss, cfg.dpo.beta, cfg.dpo.reference)
    return tokenizer, split


def heldout_figures(row: dict) -> dict:
    return {"accuracy": row.get("eval_reward_accuracy"),
            "ci95": [row.get("eval_reward_accuracy_ci_low"), row.get("eval_reward_accuracy_ci_high")],
            "ties": row.get("eval_reward_ties"), "margin": row.get("eval_reward_margin"),
            "chosen_reward": row.get("eval_chosen_reward"), "rejected_reward": row.get("eval_rejected_reward"),
            "loss": row.get("eval_loss")}


def build_report(cfg: Config, split: DPOSplit, final: dict, rows: list[dict]) -> dict:
    before = next((row for row in rows if row["step"] == 0 and "eval_reward_accuracy" in row), {})
    return {"start_model": str(resolve_path(cfg.model.path)), "loss": cfg.dpo.loss, "beta": cfg.dpo.beta,
            "label_smoothing": cfg.dpo.label_smoothing, "reference": cfg.dpo.reference, "lora": cfg.lora.enabled,
            "train_pairs": len(split.train), "heldout_pairs": len(split.eval),
            "dropped": {"reply_truncated": split.dropped_truncated, "identical": split.dropped_identical},
            "steps": final["step"], "before_training": heldout_figures(before), "heldout": heldout_figures(final),
            "model_dir": final.get("exported")}


def run(cfg: Config) -> DPOResult:
    import ray

    from actors.dpo_trainer import train_loop
    from actors.train_driver import fit
    from actors.zero_trainer import TrainingSetup, write_json_atomically
    from cluster import runtime
    from common.metrics import read_jsonl
    from jobs.plots import plot_curves

    tokenizer, split = prepare(cfg)
    output_dir = cfg.run.output_dir("dpo")
    output_dir.mkdir(parents=True, exist_ok=True)
    cluster = runtime.start(cfg.ray, ray_train=True)
    payload = {"setup": TrainingSetup.of(cfg, "dpo"), "split_ref": ray.put(split), "pad_id": tokenizer.pad_token_id,
               "output_dir": str(output_dir), "tokenizer_path": str(resolve_path(cfg.model.path))}
    final = fit(train_loop, payload, cfg.dpo, output_dir, "dpo", cluster)
    with cli.cluster_winding_down(cluster):  # the figure and the report read only files
        rows = read_jsonl(output_dir / "metrics.jsonl")
        plot_curves(rows, PLOTTED, output_dir / "dpo.png", f"DPO {cfg.run.name}")
        report = build_report(cfg, split, final, rows)
        write_json_atomically(output_dir / "report.json", report)
    log.info("DPO done: %d steps; held-out implicit-reward accuracy %.3f at step 0 → %.3f (95%% CI %.3f-%.3f), "
             "margin %.3f; model: %s", report["steps"], report["before_training"]["accuracy"] or 0.0,
             report["heldout"]["accuracy"], *report["heldout"]["ci95"], report["heldout"]["margin"],
             report["model_dir"])
    model_dir = Path(report["model_dir"]) if report["model_dir"] else None
    return DPOResult(output_dir, model_dir, final["step"], final, report)


def main(argv: list[str] | None = None) -> DPOResult:
    cfg, _ = cli.parse("python -m jobs.dpo", __doc__.split("\n\n")[0], SECTIONS, argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.dpo", main))
