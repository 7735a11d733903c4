"""The driver's side of a Ray Train run (SFT, reward model, DPO): launch the ranks with checkpoints and restarts,
summarise a failure in one line, and relay SIGTERM to the ranks through a named flag actor so that they
checkpoint after their current step (the ranks' side is actors/zero_trainer.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path

from actors.group import error_line
from actors.stop_flag import StopFlag, stop_flag_name
from common.errors import ConfigError, Preempted, RunFailed
from common.signals import sigterm_event

log = logging.getLogger("rayalign.train")


def fit(train_loop, payload: dict, settings, output_dir: Path, section: str, cluster) -> dict:
    """Driver side: run `train_loop(payload)` on settings.num_workers Ray Train workers with checkpoints under
    <output_dir>/ray_train (re-running the same output folder resumes); returns rank 0's final metrics.
    `section` is the config section of `settings`, named when the workers fail past settings.max_failures;
    `cluster` is runtime.start's answer (the worker group is checked against an embedded cluster's size)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    check_worker_group_fits(settings, section, cluster)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if settings.use_gpu else "gloo"),
        run_config=RunConfig(name="ray_train", storage_path=str(output_dir),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             # A dead worker restarts the group from the latest Ray Train checkpoint.
                             failure_config=FailureConfig(max_failures=settings.max_failures)),
    )
    with stop_on_sigterm(output_dir) as stop:
        try:
            interrupted = fit_beside_the_main_thread(trainer, stop)  # raises on failure
        except TrainingFailedError as exc:
            raise RunFailed(f"{section} training failed {_failure_summary(exc, section, settings.max_failures)}; "
                            f"re-run the same command to resume from the latest checkpoint in "
                            f"{output_dir / 'ray_train'}") from exc
    if interrupted:
        raise KeyboardInterrupt  # the ranks wrote their checkpoint; the command line says how to resume (exit 130)
    final = json.loads((output_dir / "final_metrics.json").read_text())
    if final.get("preempted"):
        raise Preempted(f"stopped by SIGTERM after step {final['step']} with a checkpoint in {output_dir}; "
                        f"re-run the same command to resume")
    return final


def fit_beside_the_main_thread(trainer, stop: threading.Event) -> bool:
    """`trainer.fit()` on a thread of its own, the main thread waiting: Ray Train then leaves SIGINT alone (on the
    main thread it installs a handler of its own, never gives it back, and on Ctrl-C ends the process with status
    0; a pipeline's later stages lost Ctrl-C to it). Ctrl-C sets `stop`, as SIGTERM does: the ranks checkpoint
    after their current step and return; a second Ctrl-C stops waiting. Returns whether Ctrl-C came."""
    outcome: dict[str, BaseException] = {}
    finished = threading.Event()  # not Thread.join: a Ctrl-C inside join can leave is_alive() wrongly False

    def run() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=run, name="ray-train-fit", daemon=True).start()
    interrupted = False
    while not finished.is_set():
        try:
            finished.wait(0.2)
        except KeyboardInterrupt:
            if interrupted:
                raise
            interrupted = True
            log.warning("Ctrl-C: the ranks finish their current step, write a checkpoint and stop (Ctrl-C again to "
                        "stop waiting)")
            stop.set()
    if "error" in outcome:
        raise outcome["error"]
    return interrupted


def check_worker_group_fits(settings, section: str, cluster) -> None:
    """A worker group larger than the embedded cluster, whose size is fixed, is refused with the settings named:
    Ray Train would wait for its resources forever (it retries a worker group's start without limit, and cannot
    tell a local cluster's size). A cluster joined by address may grow (an autoscaler), so Ray waits there."""
    if cluster.mode != "embedded":
        return
    workers = settings.num_workers
    if settings.use_gpu and workers > cluster.num_gpus:
        raise ConfigError(f"{section}.use_gpu=true asks for a GPU per worker ({section}.num_workers={workers}), "
                          f"and the embedded Ray cluster has {cluster.num_gpus:g}: set {section}.use_gpu=false, or "
                          f"fewer workers")
    cpus = workers * settings.cpus_per_worker
    if cpus > cluster.num_cpus:
        raise ConfigError(f"{section}.num_workers x {section}.cpus_per_worker ({workers} x "
                          f"{settings.cpus_per_worker:g}) = {cpus:g} CPUs, and the embedded Ray cluster has "
                          f"{cluster.num_cpus:g} (ray.num_cpus): set fewer workers or CPUs per worker, or a larger "
                          f"ray.num_cpus")


def _failure_summary(exc: Exception, section: str, max_failures: int) -> str:
    """Which ranks failed and how, in one line (Ray Train's own message is a traceback per worker); a failure of
    Ray Train's controller rather than of the workers is named as such."""
    failures = getattr(exc, "worker_failures", None)
    if not failures:
        return f"in Ray Train's controller: {error_line(exc)}"
    ranks = "; ".join(f"rank {rank}: {error_line(error)}" for rank, error in sorted(failures.items()))
    return f"after {max_failures} restart(s) of its worker group ({section}.max_failures={max_failures}): {ranks}"


@contextlib.contextmanager
def stop_on_sigterm(output_dir: Path):
    """While Ray Train runs: a named StopFlag actor, and a relay that sets it when the driver gets SIGTERM, so
    the ranks checkpoint after their current step and return (the driver then exits 143, resumable)."""
    import ray

    flag = ray.remote(num_cpus=0)(StopFlag).options(name=stop_flag_name(output_dir)).remote()
    done = threading.Event()

    def relay(stop: threading.Event) -> None:
        while not done.is_set():
            if stop.wait(0.2):
                ray.get(flag.request.remote())
                return

    with sigterm_event() as stop:
        thread = threading.Thread(target=relay, args=(stop,), daemon=True, name="sigterm-relay")
        thread.start()
        try:
            yield stop  # set by SIGTERM, or by the caller (Ctrl-C) to stop the ranks the same way
        finally:
            done.set()
            thread.join(timeout=5)
            ray.kill(flag)
