"""Helpers for tests that drive the real command line in subprocesses (as users and `ray job submit` do)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def job_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def run_job(module: str, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env or job_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_job(module: str, *args: str, log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a job in its own session so the whole tree (driver, embedded Ray, workers) can be killed."""
    handle = log_path.open("w")
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env or job_env(),
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def kill_once_checkpointed(module: str, args: list[str], checkpoint: Path | Callable[[], bool], log_path: Path,
                           timeout: float = 300) -> None:
    """Start a job, SIGKILL its whole tree (driver, embedded Ray, workers) as soon as `checkpoint` (the file a
    complete checkpoint leaves last, or a predicate saying a checkpoint is complete) is there; fails with the
    job's log if the job ended before that."""
    complete = checkpoint if callable(checkpoint) else checkpoint.exists
    proc = start_job(module, *args, log_path=log_path)
    try:
        wait_for(lambda: complete() or proc.poll() is not None, timeout, what=f"checkpoint {checkpoint}")
        assert proc.poll() is None, log_path.read_text()[-3000:]
    finally:
        kill_tree(proc)


def ray_train_registered(run_dir: Path, step: int) -> Callable[[], bool]:
    """Whether Ray Train has recorded a checkpoint of this step or a later one in its snapshot, the only
    checkpoints a re-run resumes from. Its step_NNNNNN folder appears earlier, while the checkpoint is still
    being written: a kill then leaves nothing to resume, and the re-run rightly starts over."""
    snapshot = Path(run_dir) / "checkpoint_manager_snapshot.json"

    def registered() -> bool:
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):  # not written yet, or caught mid-write
            return False
        return any(int(r.get("checkpoint_dir_name", "step_0").split("_")[-1]) >= step for r in results)

    return registered


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port")
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port", *NODE_PORTS)


def ensure_auth_token() -> None:
    """A node started with RAY_AUTH_MODE=token refuses to start without a token, and only a plain `ray.init` or
    `ray start` writes ~/.ray/auth_token by itself: on a fresh machine (CI) nothing may have yet. Ray's own
    command makes one when none exists and leaves an existing one alone."""
    subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=job_env(), check=True,
                   capture_output=True, timeout=120)


def start_ray_node(temp_dir: str, flags: list[str], ports: dict[str, int], log_path: Path) -> subprocess.Popen:
    """`ray start --block` as its own process tree on loopback with token authentication on; every port given
    explicitly so it coexists with any other Ray on this machine. Stop it with stop_ray_node(proc, temp_dir)."""
    ray_cli = str(VENV_BIN / "ray")
    ensure_auth_token()
    return subprocess.Popen([ray_cli, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                             f"--temp-dir={temp_dir}", *flags, *(f"--{name}={port}" for name, port in ports.items())],
                            env=job_env(RAY_AUTH_MODE="token"), stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_ray_node(proc: subprocess.Popen, temp_dir: str) -> None:
    """The node's daemons outlive `ray start --block`: every one of them names the node's own temp dir."""
    import psutil

    if len(temp_dir) < 8:  # an empty or generic marker would match other people's processes
        raise ValueError(f"refusing to kill processes by the marker {temp_dir!r}")
    proc.terminate()
    time.sleep(2)
    for candidate in psutil.process_iter(["cmdline"]):
        if any(temp_dir in part for part in (candidate.info["cmdline"] or [])):
            candidate.kill()
    proc.kill()
    proc.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)
