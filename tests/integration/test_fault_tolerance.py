"""The PPO job survives real failures mid-run and loses no step.

One run is sabotaged as its metrics log grows: a vLLM engine is killed (replaced in place and re-synced), the
frozen reference's process is killed (Ray restarts it and retries the call), a policy rank is killed (the step
fails, every role restarts from the last checkpoint), and the driver gets SIGTERM (it finishes its step,
checkpoints and stops); a re-run then resumes from exactly that step. The same SIGTERM through the command
line (a subprocess, exit status 143) is the slow variant."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
import ray

from actors.fault import read_faults
from actors.roster import read_roster
from common.config import load_config
from common.errors import Preempted, RunFailed
from common.metrics import read_jsonl
from jobs.ppo import run
from tests.conftest import TINY_CPU
from tests.helpers import REPO, job_env, kill_tree, start_job, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.ray]

TINY = ["ppo.rollout_batch_size=16", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1", "ppo.max_prompts=64",
        "ppo.rollout.max_new_tokens=16", "ppo.reward.rm_source=keyword", "ppo.export=false",
        "ppo.cpus_per_actor=0.5"]
STEPS, SAVE_EVERY = 9, 3


def steps_logged(out) -> list[int]:
    return [row["step"] for row in read_jsonl(out / "metrics.jsonl")]


def actor_named(roster: dict, role: str, rank: int) -> dict:
    return next(a for a in roster["actors"] if a["role"] == role and a["rank"] == rank)


class Saboteur(threading.Thread):
    """Strikes the running job, each blow once the metrics log holds a given number of steps (a restart
    truncates the log to its checkpoint, so later counts are reached again by the resumed run).

    Actor names and pids come from the run's roles.json; what was hit (and what came back) goes to `seen`."""

    def __init__(self, out):
        super().__init__(daemon=True)
        self.out, self.seen, self.errors = out, {}, []

    def run(self) -> None:
        try:
            self.after_steps(1, self.kill_engine)
            self.after_steps(2, self.crash_reference)
            self.after_steps(4, self.kill_policy_rank)
            self.after_steps(7, self.send_sigterm)
        except Exception as exc:  # surfaced by the test, not lost in the thread
            self.errors.append(exc)

    def after_steps(self, steps: int, strike) -> None:
        wait_for(lambda: len(steps_logged(self.out)) >= steps, 600, interval=0.2, what=f"step {steps}")
        strike(read_roster(self.out))

    def kill_engine(self, roster: dict) -> None:
        self.seen["engine"] = actor_named(roster, "rollout", 0)["name"]
        ray.kill(ray.get_actor(self.seen["engine"]))

    def crash_reference(self, roster: dict) -> None:
        entry = actor_named(roster, "reference", 0)
        os.kill(entry["pid"], signal.SIGKILL)  # its process dies as in a crash; Ray decides what happens next
        handle = ray.get_actor(entry["name"])
        wait_for(lambda: ray.get(handle.placement_info.remote(), timeout=300)["pid"] != entry["pid"], 300,
                 what="the reference to come back")
        self.seen["reference"] = (entry["pid"], ray.get(handle.placement_info.remote())["pid"])

    def kill_policy_rank(self, roster: dict) -> None:
        self.seen["policy"] = actor_named(roster, "policy", 1)["name"]
        ray.kill(ray.get_actor(self.seen["policy"]))

    def send_sigterm(self, roster: dict) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the driver is this process: the signal a `ray job stop` sends


@contextlib.contextmanager
def warnings_of(logger: str):
    """Messages the logger emits at WARNING and above inside the block."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(logger).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(logger).removeHandler(handler)


@pytest.fixture(scope="module")
def sabotaged(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("sabotaged")
    # The collective weight sync (a gloo group), so that the dead engine also tests its fallback and regrouping.
    cfg = load_config(TINY_CPU, [f"run.output_root={root}", *TINY, f"ppo.steps={STEPS}",
                                 f"ppo.save_every={SAVE_EVERY}", "ppo.policy_workers=2", "ppo.weight_sync=collective"])
    out = cfg.run.output_dir("ppo")
    saboteur = Saboteur(out)
    saboteur.start()
    with pytest.raises(Preempted) as stopped:
        run(cfg)
    saboteur.join(timeout=60)
    assert not saboteur.errors, saboteur.errors
    at_sigterm = {"message": str(stopped.value), "steps": steps_logged(out),
                  "checkpoints": sorted(p.name for p in (out / "checkpoints").iterdir())}
    with warnings_of("rayalign.ppo") as rerun_log:
        result = run(cfg)
    return {"result": result, "out": out, "seen": saboteur.seen, "at_sigterm": at_sigterm, "rerun_log": rerun_log}


def test_sabotaged_run_finishes_with_every_step_logged_once(sabotaged):
    out = sabotaged["out"]
    assert sabotaged["result"].steps == STEPS
    assert steps_logged(out) == list(range(1, STEPS + 1))
    assert json.loads((out / "checkpoints" / f"step_{STEPS:06d}" / "state.json").read_text())["step"] == STEPS


def test_dead_engine_was_replaced_without_restarting_the_run(sabotaged):
    out = sabotaged["out"]
    replaced = [f for f in read_faults(out) if f["event"] == "engine_replaced"]
    assert [(f["rank"], f["step"]) for f in replaced] == [(0, 2)]
    assert "rollout rank 0 died" in replaced[0]["reason"]
    assert all(f["step"] > 2 for f in read_faults(out) if f["event"] == "restart")
    # Every sync went over the broadcast group, but step 2's when the engine died in it (the object-store
    # fallback): the group formed again with the replacement.
    collective = {row["step"]: row["sync/collective"] for row in read_jsonl(out / "metrics.jsonl")}
    assert all(collective[step] == 1.0 for step in range(1, STEPS + 1) if step != 2), collective


def test_crashed_reference_came_back_in_a_new_process_by_itself(sabotaged):
    before, after = sabotaged["seen"]["reference"]
    assert before != after
    assert not [f for f in read_faults(sabotaged["out"]) if "reference" in f.get("reason", "")]


def test_dead_policy_rank_restarted_the_run_from_its_last_checkpoint(sabotaged):
    out = sabotaged["out"]
    [restart] = [f for f in read_faults(out) if f["event"] == "restart"]
    assert "policy rank 1 died" in restart["reason"]
    assert restart["from_checkpoint"] == SAVE_EVERY * ((restart["step"] - 1) // SAVE_EVERY) > 0
    assert sabotaged["seen"]["policy"] not in {a["name"] for a in read_roster(out)["actors"]}


def test_sigterm_checkpointed_the_step_in_flight_and_the_rerun_resumed_exactly_there(sabotaged):
    at_sigterm = sabotaged["at_sigterm"]
    stopped = at_sigterm["steps"][-1]
    assert at_sigterm["steps"] == list(range(1, stopped + 1)) and stopped < STEPS
    assert f"stopped by SIGTERM after step {stopped} with a checkpoint" in at_sigterm["message"]
    assert at_sigterm["checkpoints"][-1] == f"step_{stopped:06d}"
    assert f"resumed PPO from step {stopped}" in sabotaged["rerun_log"]


def test_status_shows_where_each_role_runs_how_far_the_run_got_and_its_faults(sabotaged):
    shown = subprocess.run([sys.executable, "-m", "jobs.status", "--run-dir", str(sabotaged["out"])], cwd=REPO,
                           env=job_env(), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = shown.stdout
    assert f"step {STEPS} of {STEPS}, last checkpoint: {STEPS}" in text
    assert "1 × engine_replaced, 1 × restart, 1 × preempted" in text
    # Step 2's broadcast falls back when the engine dies in it, not when it dies before (then it is replaced first).
    assert re.search(r"weight sync: over the broadcast group at (9 of 9 steps|8 of 9 steps, the others through "
                     r"Ray's object store)", text), text
    assert "s/step" in text and "samples/s" in text and "rollout tokens/s" in text
    for role in ("rollout", "policy", "value", "reference"):
        assert f"\n  {role} " in text
    assert "1 node(s): " in text and "policy ×2" in text
    assert "rollout engine: vllm (plain weights)" in text, text
    helped = subprocess.run([sys.executable, "-m", "jobs.status", "--help"], cwd=REPO, env=job_env(),
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--address" in helped.stdout and "--run-dir" in helped.stdout


@pytest.mark.slow
def test_sigterm_to_the_job_process_checkpoints_exits_143_and_a_rerun_resumes(ray_session, tmp_path):
    args = ["--config", str(TINY_CPU), f"run.output_root={tmp_path}", *TINY, "ppo.steps=6",
            "ppo.save_every=100"]  # no checkpoint but the one SIGTERM writes (and the last step's)
    out = tmp_path / "tiny-cpu" / "ppo"
    proc = start_job("jobs.ppo", *args, log_path=tmp_path / "first.log")
    try:
        wait_for(lambda: len(steps_logged(out)) >= 2 or proc.poll() is not None, 600, what="two PPO steps")
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.wait(timeout=300)
    finally:
        kill_tree(proc)  # whatever its embedded cluster left behind
    log = (tmp_path / "first.log").read_text()
    stopped = steps_logged(out)[-1]
    assert status == 143, log[-3000:]
    assert f"jobs.ppo: stopped by SIGTERM after step {stopped} with a checkpoint" in log
    assert 2 <= stopped < 6 and steps_logged(out) == list(range(1, stopped + 1))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step_{stopped:06d}"]

    with warnings_of("rayalign.ppo") as rerun_log:
        result = run(load_config(TINY_CPU, args[2:]))
    assert f"resumed PPO from step {stopped}" in rerun_log
    assert result.steps == 6 and steps_logged(out) == list(range(1, 7))


# Slow: restarts from a checkpoint run by default in the sabotaged and chaos runs; giving up is this test's own.
@pytest.mark.slow
def test_a_policy_rank_dying_past_max_restarts_gives_up_with_one_message_and_keeps_its_checkpoints(ray_session,
                                                                                                    tmp_path):
    """ppo.max_restarts=1: the first dead policy rank restarts the run from its step-1 checkpoint; the second one
    (in the restarted run) is one too many, so the job gives up, says which role died and where to resume from,
    and records it for jobs.status."""
    cfg = load_config(TINY_CPU, [f"run.output_root={tmp_path}", *TINY, "ppo.steps=6", "ppo.save_every=1",
                                 "ppo.policy_workers=2", "ppo.max_restarts=1"])
    out = cfg.run.output_dir("ppo")
    killed: list[str] = []

    def kill_policy_rank_1_once_checkpointed(step: int) -> None:
        # A complete checkpoint, not just the logged step: a kill during the save would fail that save instead.
        state = out / "checkpoints" / f"step_{step:06d}" / "state.json"
        wait_for(state.is_file, 600, interval=0.2, what=f"the step-{step} checkpoint")
        killed.append(actor_named(read_roster(out), "policy", 1)["name"])
        ray.kill(ray.get_actor(killed[-1]))

    killer = threading.Thread(target=lambda: (kill_policy_rank_1_once_checkpointed(1),
                                              kill_policy_rank_1_once_checkpointed(2)), daemon=True)
    killer.start()
    with pytest.raises(RunFailed) as failed:
        run(cfg)
    killer.join(timeout=60)
    assert len(set(killed)) == 2  # the restarted run's rank was a new actor
    message = str(failed.value)
    assert "policy rank 1 died" in message
    assert "gave up after 1 restart(s) (ppo.max_restarts=1)" in message
    assert "re-run the same command to resume from the step-2 checkpoint" in message
    faults = read_faults(out)
    assert [f["event"] for f in faults] == ["restart", "gave_up"]
    assert (faults[0]["from_checkpoint"], faults[1]["last_checkpoint"], faults[1]["restarts"]) == (1, 2, 1)
    assert (out / "checkpoints" / "step_000002" / "state.json").is_file()
    assert steps_logged(out) == [1, 2]
