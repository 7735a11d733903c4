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
