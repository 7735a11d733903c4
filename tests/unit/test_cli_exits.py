"""What a job's command line does with each way a run ends: exit status and the one line a person reads."""

from __future__ import annotations

import pytest
from ray.train import ControllerError, WorkerGroupError

from actors.train_driver import _failure_summary
from common.errors import ConfigError
from jobs import cli


def ending_with(exc: BaseException | None):
    def main(argv):
        if exc is not None:
            raise exc
    return main


@pytest.mark.parametrize("exc, status, line", [
    (None, 0, None),
    (ConfigError("ppo.clip_range must be > 0"), 2, "jobs.x: error: ppo.clip_range must be > 0"),
    (cli.Preempted("stopped by SIGTERM after step 3 with a checkpoint"), 143,
     "jobs.x: stopped by SIGTERM after step 3 with a checkpoint"),
    (cli.RunFailed("policy rank 1 died during train; gave up after 2 restart(s)"), 1,
     "jobs.x: failed: policy rank 1 died during train; gave up after 2 restart(s)"),
])
def test_each_ending_has_its_status_and_one_line(capsys, exc, status, line):
    assert cli.run_main("jobs.x", ending_with(exc), []) == status
    err = capsys.readouterr().err
    assert err == ("" if line is None else line + "\n")


def test_an_unexpected_error_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        cli.run_main("jobs.x", ending_with(ZeroDivisionError("a bug")), [])


def test_ray_train_worker_failures_become_one_line_per_rank():
    """Ray Train's own message carries each worker's whole traceback; the summary keeps each rank's last line."""
    remote = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 3, in step\n"
                          "RuntimeError: Connection reset by peer\n")
    error = WorkerGroupError("rank 1 failed", {1: remote, 0: ValueError("loss is NaN at step 7")})
    assert _failure_summary(error, "dpo", 2) == ("after 2 restart(s) of its worker group (dpo.max_failures=2): "
                                                 "rank 0: loss is NaN at step 7; rank 1: RuntimeError: Connection "
                                                 "reset by peer")
    assert _failure_summary(ControllerError(RuntimeError("placement group timed out")), "sft", 2) == \
        "in Ray Train's controller: placement group timed out"


def test_a_worker_group_larger_than_the_embedded_cluster_is_refused_naming_the_settings():
    """Ray Train would wait for it forever; a cluster joined by address may grow, so it is left to Ray there."""
    from types import SimpleNamespace

    from actors.train_driver import check_worker_group_fits
    from cluster.runtime import RuntimeInfo

    embedded = RuntimeInfo("embedded", "local", num_cpus=8, num_gpus=0)
    fits = SimpleNamespace(num_workers=2, use_gpu=False, cpus_per_worker=1.0)
    check_worker_group_fits(fits, "sft", embedded)
    with pytest.raises(ConfigError, match=r"sft.use_gpu=true asks for a GPU per worker \(sft.num_workers=2\), and "
                                          r"the embedded Ray cluster has 0"):
        check_worker_group_fits(SimpleNamespace(num_workers=2, use_gpu=True, cpus_per_worker=1.0), "sft", embedded)
    with pytest.raises(ConfigError, match=r"dpo.num_workers x dpo.cpus_per_worker \(3 x 3\) = 9 CPUs, and the "
                                          r"embedded Ray cluster has 8"):
        check_worker_group_fits(SimpleNamespace(num_workers=3, use_gpu=False, cpus_per_worker=3.0), "dpo", embedded)
    joined = RuntimeInfo("cluster", "10.0.0.1:6379", num_cpus=8, num_gpus=0)
    check_worker_group_fits(SimpleNamespace(num_workers=2, use_gpu=True, cpus_per_worker=1.0), "sft", joined)
