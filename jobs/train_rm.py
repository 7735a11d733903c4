"""Reward-model training (pairwise Bradley–Terry) on Ray Train + DeepSpeed ZeRO, full or LoRA.

    python -m jobs.train_rm --config configs/tiny-cpu.yaml [section.key=value ...]
    python -m jobs.train_rm --config configs/rm-minilm-hh.yaml

Outputs in <run.output_root>/<run.name>/reward_model/: report.json (held-out pairwise accuracy with its 95%
Wilson interval, mean margin, reward/policy size check), metrics.jsonl/.csv, tensorboard/, accuracy.png,
the trained model as a Hugging Face folder (with tokenizer) in model/, and Ray Train checkpoints under
ray_train/ (re-running the same command resumes from them).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.config import Config
from jobs import cli

log = logging.getLogger("rayalign.train_rm")
if TYPE_CHECKING:
    from actors.reward_trainer import PreferenceSplit

SECTIONS = ("run", "ray", "model", "lora", "deepspeed", "reward_model")


@dataclass(frozen=True)
class RewardModelResult:
    output_dir: Path
    model_dir: Path | None
    report: dict


@dataclass(frozen=True)
class Prepared:
    backbone: Path
    input_format: str
    pad_id: int
    split: PreferenceSplit
    size_check: dict


def size_check(cfg: Config, backbone: Path) -> dict:
    """Reward vs policy parameter counts from the checkpoints' headers (SPEC §3); warns or refuses."""
    from common.model_sizes import check_size_match, parameter_count_on_disk

    rm_params, policy_params = parameter_count_on_disk(backbone), parameter_count_on_disk(cfg.model.path)
    warning = check_size_match(rm_params, policy_params, cfg.reward_model.size_ratio_warn,
                               cfg.reward_model.refuse_oversize)
    return {"reward_params": rm_params, "policy_params": policy_params, "ratio": rm_params / policy_params,
            "limit": cfg.reward_model.size_ratio_warn, "warning": warning}


def prepare(cfg: Config) -> Prepared:
    """Driver-side work that should fail fast: backbone folder, size match, preference rows, encoding."""
    from actors import reward
    from actors.reward_trainer import build_preference_split, check_lora_targets
    from common.families import lora_targets, model_type_of
    from common.records import read_many

    cfg.check_stage("reward_model")
    rm = cfg.reward_model
    backbone = reward.backbone_path(cfg)
    fmt = reward.read_input_format(backbone)
    tokenizer = reward.load_reward_tokenizer(backbone, fmt, cfg.model.chat_template)
    if rm.lora:
        check_lora_targets(backbone, lora_targets(cfg.lora.target_modules, model_type_of(backbone)))
    sizes = size_check(cfg, backbone)
    records = read_many(rm.train_files, rm.max_records)
    split = build_preference_split(records, tokenizer, fmt, rm.max_length, rm.eval_fraction, cfg.run.seed,
                                   rm.num_workers)
    log.info("reward model: %s backbone %s (%d params); %d train / %d held-out pairs (%d identical dropped)",
             fmt, backbone, sizes["reward_params"], len(split.train), len(split.eval), split.dropped_identical)
    return Prepared(backbone, fmt, tokenizer.pad_token_id, split, sizes)


def build_report(cfg: Config, prepared: Prepared, final: dict, rows: list[dict]) -> dict:
    before = next((row for row in rows if row["step"] == 0 and "eval_accuracy" in row), {})
    low, high = final.get("eval_accuracy_ci_low", 0.0), final.get("eval_accuracy_ci_high", 1.0)
    return {
        "backbone": str(prepared.backbone),
        "input_format": prepared.input_format,
        "lora": cfg.reward_model.lora,
        "train_files": list(cfg.reward_model.train_files),
        "train_pairs": len(prepared.split.train),
        "dropped_identical_pairs": prepared.split.dropped_identical,
        "steps": final["step"],
        "heldout": {"pairs": int(final.get("eval_pairs", len(prepared.split.eval))),
                    "accuracy": final.get("eval_accuracy"), "ci95": [low, high],
                    "ci_excludes_chance": low > 0.5 or high < 0.5,
                    "mean_margin": final.get("eval_margin"), "loss": final.get("eval_loss")},
        "before_training": {"accuracy": before.get("eval_accuracy"),
                            "ci95": [before.get("eval_accuracy_ci_low"), before.get("eval_accuracy_ci_high")],
                            "mean_margin": before.get("eval_margin")},
        "size_check": prepared.size_check,
        "model_dir": final.get("exported"),
    }


def run(cfg: Config) -> RewardModelResult:
    import ray

    from actors.reward_trainer import train_loop
    from actors.train_driver import fit
    from actors.zero_trainer import TrainingSetup, write_json_atomically
    from cluster import runtime
    from common.metrics import read_jsonl
    from jobs.plots import plot_curves

    prepared = prepare(cfg)
    output_dir = cfg.run.output_dir("reward_model")
    output_dir.mkdir(parents=True, exist_ok=True)
    cluster = runtime.start(cfg.ray, ray_train=True)
    payload = {"setup": TrainingSetup.of(cfg, "reward_model"), "split_ref": ray.put(prepared.split),
               "backbone": str(prepared.backbone), "pad_id": prepared.pad_id, "output_dir": str(output_dir)}
    final = fit(train_loop, payload, cfg.reward_model, output_dir, "reward_model", cluster)
    with cli.cluster_winding_down(cluster):  # the figure and the report read only files
        rows = read_jsonl(output_dir / "metrics.jsonl")
        plot_curves(rows, ["loss", "eval_accuracy", "eval_margin", "lr", "grad_norm"], output_dir / "accuracy.png",
                    f"reward model {cfg.run.name}")
        report = build_report(cfg, prepared, final, rows)
        write_json_atomically(output_dir / "report.json", report)
    heldout = report["heldout"]
    log.info("reward model done: %d steps; held-out accuracy %.3f (95%% CI %.3f-%.3f, n=%d), mean margin %.3f; "
             "model: %s", report["steps"], heldout["accuracy"], *heldout["ci95"], heldout["pairs"],
             heldout["mean_margin"], report["model_dir"])
    model_dir = Path(report["model_dir"]) if report["model_dir"] else None
    return RewardModelResult(output_dir, model_dir, report)


def main(argv: list[str] | None = None) -> RewardModelResult:
    cfg, _ = cli.parse("python -m jobs.train_rm", __doc__.split("\n\n")[0], SECTIONS, argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.train_rm", main))
