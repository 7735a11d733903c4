"""PPO checkpoints: <output>/checkpoints/step_<n>/ holds the policy's (and the value model's) DeepSpeed shards and
state.json, the driver's state. state.json is written last, so a folder without it is an interrupted save and is
never resumed from; the two newest complete checkpoints are kept (a rollback needs one before the last). The shards
are synced to disk before state.json is written, so a crash cannot leave the mark beside data that never landed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from common.durable import sync_tree, write_atomically

STATE_FILE = "state.json"
KEEP = 2


def folder_of(ckpt_dir: Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:06d}"


def checkpoint_steps(ckpt_dir: Path) -> list[int]:
    """Steps with a complete checkpoint, oldest first."""
    return sorted(int(p.name.split("_")[1]) for p in Path(ckpt_dir).glob("step_*") if (p / STATE_FILE).exists())


def save(ckpt_dir: Path, step: int, trained: list, state: dict, extra: dict[str, str] | None = None) -> None:
    """Every trained role group's shards (each rank writes its own) and the `extra` files (name → text), then the
    driver state; older ones pruned."""
    folder = folder_of(ckpt_dir, step)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for group in trained:
        group.call("save", str(folder))
    for name, text in (extra or {}).items():
        write_atomically(folder / name, text)
    sync_tree(folder)
    write_atomically(folder / STATE_FILE, json.dumps(state, indent=2))
    for old in checkpoint_steps(ckpt_dir)[:-KEEP]:
        shutil.rmtree(folder_of(ckpt_dir, old), ignore_errors=True)


def discard_after(ckpt_dir: Path, step: int) -> list[int]:
    """Remove the checkpoints newer than `step` (a rollback's target): they hold the weights rolled back, and a
    resume picks the newest complete one. Each loses its state.json first, so a crash part-way never leaves one
    that still looks complete."""
    newer = [s for s in checkpoint_steps(ckpt_dir) if s > step]
    for s in newer:
        (folder_of(ckpt_dir, s) / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder_of(ckpt_dir, s), ignore_errors=True)
    return newer


def load(ckpt_dir: Path, step: int, trained: list) -> dict:
    """Load every trained role group's shards of `step`; returns the driver state saved with them."""
    folder = folder_of(ckpt_dir, step)
    for group in trained:
        group.call("load", str(folder))
    return json.loads((folder / STATE_FILE).read_text())
