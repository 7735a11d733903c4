"""The whole flow on one config: curate → SFT → reward model → PPO (or DPO), each stage feeding the next.

    python -m jobs.pipeline --config configs/tiny-cpu.yaml [section.key=value ...]
    python -m jobs.pipeline --config configs/synth-tiny.yaml   # starts with synthesize: generated candidates too

A finished stage leaves <run>/<stage>/stage.json (its outputs and a fingerprint of the config it ran with and of
the stages before it); re-running skips every stage whose fingerprint still matches and resumes an unfinished one
from its own checkpoints. The end of the run writes <run>/report.md + report.json: every stage's figures and
plots, and answers to fixed prompts from the base model and the final one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from common.config import Config
from common.configlib import to_dict
from common.durable import write_atomically
from common.errors import ConfigError
from jobs import cli

log = logging.getLogger("rayalign.pipeline")
SECTIONS = ("run", "ray", "model", "lora", "deepspeed", "data", "sft", "reward_model", "ppo", "dpo", "curate",
            "synth", "pipeline")
# Which config sections each stage's result depends on (its fingerprint), besides what earlier stages fed it.
STAGE_SECTIONS = {"synthesize": ("model", "synth"), "curate": ("curate",),
                  "sft": ("model", "lora", "deepspeed", "data", "sft"),
                  "reward_model": ("model", "lora", "deepspeed", "reward_model"),
                  "ppo": ("model", "lora", "deepspeed", "ppo"), "dpo": ("model", "lora", "deepspeed", "dpo")}


# The inputs of later stages each stage produces (the keys of `outputs` that `wire` reads).
PRODUCES = {"synthesize": ("candidates",), "curate": ("curated",), "sft": ("sft_model",),
            "reward_model": ("reward_model",), "ppo": ("policy",), "dpo": ("policy",)}


def stages_for_task(cfg: Config) -> tuple[list[str], str | None]:
    """(the stages to run, the line that says why they differ from pipeline.stages, or None): the rule jobs.plan
    plans with too (jobs/planning/profiles.stages_for_task)."""
    from jobs.planning.profiles import stages_for_task as for_task

    return for_task(cfg, cfg.pipeline.task_type or cfg.profile.task_type)


def check_stages(cfg: Config, stages: list[str]) -> None:
    """Every stage's own rules (Config.check_stage) before Ray starts, not when its turn comes after an hour of
    earlier stages; an input an earlier stage will produce need not exist yet."""
    wired: set[str] = set()
    for stage in stages:
        cfg.check_stage(stage, wired)
        wired.update(PRODUCES[stage])
    for producer, users in model_users(cfg, stages).items():
        if users and not getattr(cfg, producer).export:
            raise ConfigError(f"{producer}.export=false, but the {', '.join(users)} stage(s) after it start from the "
                              f"model it exports: set {producer}.export=true, or give those stages a model of their "
                              f"own")


def model_users(cfg: Config, stages: list[str]) -> dict[str, list[str]]:
    """The later stages that start from the SFT model and from the reward model, as `wire` hands them over."""
    def after(stage: str) -> list[str]:
        return stages[stages.index(stage) + 1:] if stage in stages else []

    sft_users = [stage for stage in after("sft")
                 if stage in ("ppo", "dpo") or (stage == "reward_model" and cfg.reward_model.backbone is None)]
    rm_users = [stage for stage in after("reward_model") if stage == "ppo" and cfg.ppo.reward.rm_source == "model"]
    return {"sft": sft_users, "reward_model": rm_users}


def wire(cfg: Config, stage: str, outputs: dict) -> Config:
    """The config a stage runs with: earlier stages' outputs replace the inputs they produce."""
    if stage == "curate" and "candidates" in outputs:
        from jobs.funnel import with_candidates

        cfg = with_candidates(cfg, Path(outputs["candidates"]))
    if stage == "sft" and "curated" in outputs:
        cfg = replace(cfg, data=replace(cfg.data, train_files=[outputs["curated"]]))
    if stage == "reward_model" and "sft_model" in outputs and cfg.reward_model.backbone is None:
        cfg = replace(cfg, reward_model=replace(cfg.reward_model, backbone=outputs["sft_model"]))
    if stage == "ppo":
        ppo = cfg.ppo
        if "sft_model" in outputs:
            ppo = replace(ppo, init_model=outputs["sft_model"])
        if "reward_model" in outputs and ppo.reward.rm_source == "model":
            ppo = replace(ppo, reward=replace(ppo.reward, rm_path=outputs["reward_model"]))
        cfg = replace(cfg, ppo=ppo)
    if stage == "dpo" and "sft_model" in outputs:
        cfg = replace(cfg, model=replace(cfg.model, path=outputs["sft_model"]))
    return cfg


def fingerprint(cfg: Config, stage: str, outputs: dict, upstream: dict[str, str] | None = None) -> str:
    """What a stage's result depends on: its config sections, run.seed (every stage draws from it), the paths it is
    fed, and the fingerprints of the stages before it (`upstream`). The paths alone never change (<run>/curate/
    curated.jsonl), so without the last a re-curated dataset left the SFT stage 'already done' on the old one."""
    data = {name: to_dict(getattr(cfg, name)) for name in STAGE_SECTIONS[stage]}
    data.update(seed=cfg.run.seed, inputs=outputs, upstream=upstream or {})
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- stages: each runs its job and returns the outputs it adds ------------------------------------------
def _synthesize(cfg: Config) -> dict:
    from jobs.synthesis.run import run

    result = run(cfg)
    return {"candidates": str(result.candidates_file), "synth_report": result.report["counts"]}


def _curate(cfg: Config) -> dict:
    from jobs.curation.pipeline import run

    result = run(cfg)
    return {"curated": str(result.output_dir / "curated.jsonl"), "curate_report": result.report["accounting"]}


def _sft(cfg: Config) -> dict:
    from jobs.sft import run

    result = run(cfg)
    exported = {"sft_model": str(result.model_dir)} if result.model_dir else {}  # sft.export=false: no model
    return {**exported, "sft_metrics": _numbers(result.final_metrics)}


def _reward_model(cfg: Config) -> dict:
    from jobs.train_rm import run

    result = run(cfg)
    heldout = result.report["heldout"]
    return {"reward_model": str(result.model_dir),
            "reward_model_report": {"eval_accuracy": heldout["accuracy"], "eval_accuracy_ci95": heldout["ci95"],
                                    "eval_margin": heldout["mean_margin"],
                                    "accuracy_before_training": result.report["before_training"]["accuracy"]}}


def _ppo(cfg: Config) -> dict:
    from jobs.ppo import run

    result = run(cfg)
    return {"policy": str(result.model_dir), "ppo_metrics": _numbers(result.final_metrics)}


def _dpo(cfg: Config) -> dict:
    from jobs.dpo import run

    result = run(cfg)
    return {"policy": str(result.model_dir), "dpo_metrics": _numbers(result.final_metrics)}


STAGES: dict[str, Callable[[Config], dict]] = {"synthesize": _synthesize, "curate": _curate, "sft": _sft,
                                              "reward_model": _reward_model, "ppo": _ppo, "dpo": _dpo}


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def stage_record(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "stage.json"


def run_stage(cfg: Config, run_dir: Path, stage: str, outputs: dict,
              upstream: dict[str, str] | None = None) -> tuple[dict, str]:
    """Run one stage unless an identical run of it already finished (same fingerprint, `upstream` holding the
    earlier stages'); returns its outputs and its fingerprint."""
    stage_cfg = wire(cfg, stage, outputs)
    key = fingerprint(stage_cfg, stage, {k: v for k, v in outputs.items() if isinstance(v, str)}, upstream)
    record = stage_record(run_dir, stage)
    if record.exists():
        done = json.loads(record.read_text())
        if done.get("fingerprint") == key:
            log.info("stage %s already done (%s); skipping", stage, record)
            return done["outputs"], key
    log.info("stage %s: starting", stage)
    started = time.monotonic()
    produced = STAGES[stage](stage_cfg)
    record.parent.mkdir(parents=True, exist_ok=True)
    # The config the stage ran with, wired inputs included: what a person checks when a result surprises.
    write_atomically(record, json.dumps({"fingerprint": key, "seconds": time.monotonic() - started,
                                         "outputs": produced, "config": to_dict(stage_cfg)}, indent=2, default=str))
    return produced, key


def run(cfg: Config) -> dict:
    from cluster import runtime
    from jobs.pipeline_report import write_report

    stages, why = stages_for_task(cfg)
    if why:
        log.warning(why)
    check_stages(cfg, stages)
    run_dir = cfg.run.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    runtime.start(cfg.ray, ray_train=True)
    outputs: dict = {}
    seconds: dict[str, float] = {}
    fingerprints: dict[str, str] = {}
    for stage in stages:
        started = time.monotonic()
        produced, fingerprints[stage] = run_stage(cfg, run_dir, stage, outputs, dict(fingerprints))
        outputs.update(produced)
        seconds[stage] = time.monotonic() - started
    report = write_report(cfg, run_dir, outputs, seconds)
    log.info("pipeline done: %s", report)
    return outputs


def main(argv: list[str] | None = None) -> dict:
    cfg, _ = cli.parse("python -m jobs.pipeline", __doc__.split("\n\n")[0], SECTIONS, argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.pipeline", main))
