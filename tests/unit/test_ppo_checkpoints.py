"""PPO checkpoint folders without Ray: which steps count as complete, pruning, and what a rollback discards."""

from __future__ import annotations

import json
from pathlib import Path

from actors import ppo_checkpoints as ckpt


class Group:
    """A trained role group's checkpoint calls, as the driver makes them: each rank writes its own shard."""

    def call(self, method: str, folder: str) -> None:
        if method == "save":
            (Path(folder) / "shard.pt").write_text("weights")


def test_a_rollback_discards_the_newer_checkpoints_so_a_resume_cannot_undo_it(tmp_path):
    for step in (5, 10):
        ckpt.save(tmp_path, step, [Group()], {"step": step})
    (tmp_path / "step_000015").mkdir()  # an interrupted save: no state.json, never resumed from
    assert ckpt.checkpoint_steps(tmp_path) == [5, 10]  # the two newest complete ones are kept
    assert ckpt.discard_after(tmp_path, 5) == [10]
    assert ckpt.checkpoint_steps(tmp_path) == [5] and not (tmp_path / "step_000010").exists()
    ckpt.save(tmp_path, 16, [Group()], {"step": 16, "policy_lr": 1e-6})  # the state after the rollback
    assert ckpt.checkpoint_steps(tmp_path) == [5, 16]
    assert json.loads((tmp_path / "step_000016" / "state.json").read_text())["policy_lr"] == 1e-6


def test_the_shards_reach_the_disk_before_the_state_that_declares_the_checkpoint_complete(tmp_path, fsynced):
    """A crash right after the save must not leave a state.json beside missing or partial shards: a resume would
    load them. The shards, their folder and its name are synced first, then state.json's data, then its name."""
    ckpt.save(tmp_path, 1, [Group()], {"step": 1})
    folder = ckpt.folder_of(tmp_path, 1)
    state, shard = (folder / ckpt.STATE_FILE).stat().st_ino, (folder / "shard.pt").stat().st_ino
    assert fsynced.index(shard) < fsynced.index(state) < len(fsynced) - 1
    assert tmp_path.stat().st_ino in fsynced[:fsynced.index(state)]  # the step folder's own name
    assert fsynced[-1] == folder.stat().st_ino and ckpt.checkpoint_steps(tmp_path) == [1]
    assert sorted(p.name for p in folder.iterdir()) == ["shard.pt", "state.json"]
