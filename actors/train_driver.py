"""The driver's side of a Ray Train run (SFT, reward model, DPO): launch the ranks with checkpoints and restarts,
summarise a failure in one line, and relay SIGTERM to the ranks through a named flag actor so that they
checkpoint after their current step (the ranks' side is actors/zero_trainer.py)."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from actors.group import error_line
from actors.stop_flag import StopFlag, stop_flag_name
from common.errors import Preempted, RunFailed
from common.signals import sigterm_event


def fit(train_loop, payload: dict, settings, output_dir: Path, section: str) -> dict:
    """Driver side: run `train_loop(payload)` on settings.num_workers Ray Train workers with checkpoints under
    <output_dir>/ray_train (re-running the same output folder resumes); returns rank 0's final metrics.
    `section` is the config section of `settings`, named when the workers fail past settings.max_failures."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

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
    with stop_on_sigterm(output_dir):
        try:
            trainer.fit()  # raises on failure
        except TrainingFailedError as exc:
            raise RunFailed(f"{section} training failed {_failure_summary(exc, section, settings.max_failures)}; "
                            f"re-run the same command to resume from the latest checkpoint in "
                            f"{output_dir / 'ray_train'}") from exc
    final = json.loads((output_dir / "final_metrics.json").read_text())
    if final.get("preempted"):
        raise Preempted(f"stopped by SIGTERM after step {final['step']} with a checkpoint in {output_dir}; "
                        f"re-run the same command to resume")
    return final


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
            yield
        finally:
            done.set()
            thread.join(timeout=5)
            ray.kill(flag)
