"""A Ray Train job (SFT) whose worker process is killed mid-run: with sft.max_failures, Ray Train restarts the
worker group from the latest checkpoint inside the same job, and the run ends with every step logged once;
with no restarts left, the job fails with one line naming the rank and the checkpoint to resume from."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import psutil
import pytest

from common.config import load_config
from common.errors import RunFailed
from common.metrics import read_jsonl
from jobs.sft import run
from tests.conftest import TINY_CPU
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]


def our_train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of the session's embedded cluster: that cluster's daemons are children of this
    process, so nothing of another Ray on the machine can match."""
    return [p for p in psutil.Process(os.getpid()).children(recursive=True)
            if "RayTrainWorker" in " ".join(p.cmdline())]


def latest_registered_checkpoint(out) -> str | None:
    snapshot = out / "ray_train" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return None
    return latest["checkpoint_dir_name"] if latest else None


def sft_config(tmp_path, max_failures: int):
    return load_config(TINY_CPU, [f"run.output_root={tmp_path}", "sft.max_steps=12", "sft.save_every=3",
                                  "sft.eval_every=6", f"sft.max_failures={max_failures}"])


@contextlib.contextmanager
def one_worker_killed_after_the_first_checkpoint(out):
    """SIGKILL one Ray Train worker once the step-3 checkpoint is registered, while the block runs the job."""
    killed: list[int] = []

    def kill_a_worker_after_a_checkpoint() -> None:
        # Ray Train's controller registers a reported checkpoint on its next health check (every 2 s); only a
        # registered one is restored, so wait until its snapshot names step 3.
        wait_for(lambda: latest_registered_checkpoint(out) == "step_000003", 600, interval=0.2,
                 what="the first registered checkpoint")
        victim = our_train_workers()[0]
        killed.append(victim.pid)
        victim.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker_after_a_checkpoint, daemon=True)
    killer.start()
    yield
    killer.join(timeout=60)
    assert killed, "no Ray Train worker was killed"


def test_killed_sft_worker_restarts_from_the_latest_checkpoint(ray_session, tmp_path):
    cfg = sft_config(tmp_path, max_failures=1)
    out = cfg.run.output_dir("sft")
    with one_worker_killed_after_the_first_checkpoint(out):
        result = run(cfg)
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))  # no step lost, none twice
    assert [r["step"] for r in rows].count(0) == 1  # the step-0 evaluation too
    assert json.loads((out / "final_metrics.json").read_text())["step"] == 12
    assert result.final_metrics["step"] == 12


def test_a_worker_dying_past_max_failures_fails_the_job_with_one_message_naming_the_rank(ray_session, tmp_path):
    cfg = sft_config(tmp_path, max_failures=0)
    out = cfg.run.output_dir("sft")
    with one_worker_killed_after_the_first_checkpoint(out), pytest.raises(RunFailed) as failed:
        run(cfg)
    message = str(failed.value)
    assert message.startswith("sft training failed after 0 restart(s) of its worker group (sft.max_failures=0): rank ")
    assert "\n" not in message
    assert f"resume from the latest checkpoint in {out / 'ray_train'}" in message
    assert latest_registered_checkpoint(out) == "step_000003"
