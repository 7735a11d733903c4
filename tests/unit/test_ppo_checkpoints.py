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


def test_extra_files_are_on_disk_before_the_state_that_declares_the_checkpoint_complete(tmp_path, fsynced):
    """The batch sampled ahead (ppo.async_rollouts) travels as prefetched.json beside the shards: written and
    synced before state.json, so a complete checkpoint never lacks it."""
    ckpt.save(tmp_path, 2, [Group()], {"step": 2}, {"prefetched.json": '{"step": 3}'})
    folder = ckpt.folder_of(tmp_path, 2)
    extra, state = (folder / "prefetched.json").stat().st_ino, (folder / ckpt.STATE_FILE).stat().st_ino
    assert fsynced.index(extra) < fsynced.index(state)
    assert json.loads((folder / "prefetched.json").read_text()) == {"step": 3}


def test_a_kept_batch_is_used_only_by_a_run_that_would_have_sampled_it():
    """A resumed run trains on the batch its checkpoint kept only when it overlaps its rollouts and would pick the
    same prompts, with the same token ids, under the same sampler; anything else samples afresh (a changed
    samples_per_prompt once trained old rows in wrong groups, a changed prompt file scored answers against other
    questions)."""
    from actors.ppo_loop import kept_batch_problem

    sampling = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 24}
    prompt_ids = [[1, 2], [1, 3], [1, 4]]
    saved = {"step": 3, "picked": [2, 2, 0, 0], "version": 1, "sampling": sampling,
             "samples": [{"prompt_ids": prompt_ids[p]} for p in (2, 2, 0, 0)]}
    assert kept_batch_problem(saved, 3, [2, 2, 0, 0], prompt_ids, sampling, overlapped=True) is None
    assert "async_rollouts is off" in kept_batch_problem(saved, 3, [2, 2, 0, 0], prompt_ids, sampling, False)
    assert "other prompts" in kept_batch_problem(saved, 3, [2, 2, 2, 0, 0, 0], prompt_ids, sampling, True)
    assert "other prompts" in kept_batch_problem(saved, 4, [2, 2, 0, 0], prompt_ids, sampling, True)
    changed = [[1, 2], [1, 3], [9, 9]]
    assert "token ids differ" in kept_batch_problem(saved, 3, [2, 2, 0, 0], changed, sampling, True)
    assert "token ids differ" in kept_batch_problem(saved, 3, [2, 2, 0, 0], prompt_ids[:2], sampling, True)
    assert "sampler changed" in kept_batch_problem(saved, 3, [2, 2, 0, 0], prompt_ids,
                                                   {**sampling, "temperature": 1.0}, True)
