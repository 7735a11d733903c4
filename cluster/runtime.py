"""Where a job runs: an embedded local Ray cluster on loopback, or an existing cluster by address.

Resolution order: `ray.address` in the config, else RAY_ADDRESS (set by `ray job submit` for the
entrypoint), else a fresh embedded cluster bound to 127.0.0.1. Joining fails within
`ray.connect_timeout_s` with a message that names the address instead of hanging.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from common.config import RayConfig
from common.errors import ClusterUnreachable, ConfigError

log = logging.getLogger("rayalign.runtime")

# Environment every Ray worker of ours needs: vLLM's CPU build refuses to start without a KV-cache size,
# and the in-process engine starts in ~2 s instead of ~40 s for the multiprocess one (STACK.md).
WORKER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    # Ray Serve's HTTP proxy buffers a whole request body before any replica can refuse it; this callback puts
    # a body limit in front of that (serve/proxy_limits.py; the limit: RAYALIGN_PROXY_MAX_REQUEST_BYTES).
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.proxy_limits:proxy_middlewares",
    "RAYALIGN_PROXY_MAX_REQUEST_BYTES": "1000000",
}

# Ray Train on the embedded cluster (SFT, DPO, reward model). Its controller polls the worker group every 2 s by
# default, so a run's start and its end each waited up to 2 s to be noticed; a poll is one call per worker. Its
# preemption watcher, a process of its own (seconds of CPU to start on a small machine), watches for node drains,
# which one local node never gets. Measured, SFT on the tiny config (2 cores): 29.0 -> 24.9 s, medians of 5.
# A cluster job keeps Ray's defaults: its runs are long, and its nodes can be drained.
EMBEDDED_TRAIN_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


# The embedded raylet connects to the object store it has just started in its own thread, over a Unix socket; when
# the store is not listening yet, the connect retries after Ray's 1 s (raylet_client_connect_timeout_milliseconds).
# It lost that race in 31 of the 139 embedded starts logged on the 2-core machine (2026-12-05/06: 1.0 s between
# the store's first dump and the object manager's start, against 1-10 ms in the others), and the driver waits for
# the raylet. Retrying every 0.1 s, ten times as often, keeps Ray's 10 s before a connect gives up.
SOCKET_RETRIES = {"raylet_client_connect_timeout_milliseconds": 100, "raylet_client_num_connect_attempts": 100}


@dataclass(frozen=True)
class RuntimeInfo:
    mode: str  # "embedded" or "cluster"
    address: str
    num_cpus: float
    num_gpus: float
    started_here: bool = True  # False: Ray was already up in this process (a test session, a pipeline's stage)


def _host_port(address: str) -> tuple[str, int] | None:
    """host:port of a GCS or Ray Client address; None for 'auto' / 'local' which Ray resolves itself."""
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if parsed.hostname is None:
        return None
    return parsed.hostname, parsed.port or (10001 if address.startswith("ray://") else 6379)


def wait_reachable(address: str, timeout_s: float) -> None:
    """Probe the address with TCP connects until it answers or `timeout_s` passes."""
    target = _host_port(address)
    if target is None:
        return
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(target, timeout=min(2.0, timeout_s)):
                return
        except OSError as exc:
            last_error = exc
            time.sleep(0.5)
    raise ClusterUnreachable(
        f"Ray cluster at {address!r} is unreachable after {timeout_s:.0f} s ({last_error}); "
        f"check ray.address / RAY_ADDRESS, that `ray start --head` is running there, and the firewall")


def enable_client_auth() -> None:
    """A client joining a token-auth cluster needs RAY_AUTH_MODE=token; Ray only infers it from an existing
    token file. Respect an explicit choice; otherwise turn it on when a token is available.

    Ray reads the mode when it is imported, so this must run before the first `import ray`."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        os.environ["RAY_AUTH_MODE"] = "token"


def tools_beside_interpreter_first() -> None:
    """Put the folder of this Python's own scripts (a virtual environment's bin/) first on PATH, for this
    driver and the embedded cluster's workers, which inherit it.

    DeepSpeed JIT-compiles its ops with the first `ninja` on PATH. The environment ships ninja 1.13; a system
    ninja 1.11 hashes build commands differently, so a process that found one rebuilt the op the other had
    built (~45 s on 2 cores, both ranks waiting) whenever runs started from a shell and from the venv mixed."""
    scripts = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if scripts and path[:1] != [scripts]:
        os.environ["PATH"] = os.pathsep.join([scripts, *(p for p in path if p != scripts)])


def prepare_process(cfg: RayConfig) -> None:
    """Environment for this driver, set before Ray is imported: worker defaults (and Ray Train's on an embedded
    cluster, whose workers inherit them), this environment's tools first on PATH, and client-side token
    authentication when the job will join an existing cluster. A value already exported wins."""
    os.environ.update({k: v for k, v in WORKER_ENV.items() if k not in os.environ})
    tools_beside_interpreter_first()
    if _resolved_address(cfg):
        enable_client_auth()
    else:
        os.environ.update({k: v for k, v in EMBEDDED_TRAIN_ENV.items() if k not in os.environ})


def start(cfg: RayConfig, ray_train: bool = False) -> RuntimeInfo:
    """Join the configured cluster or start an embedded one; idempotent within a process. `ray_train`: the job
    trains through Ray Train (SFT, DPO, reward model, a pipeline), whose workers an embedded cluster quiets with
    a setup hook (below)."""
    if cfg.autoscaling and not _resolved_address(cfg):
        raise ConfigError("ray.autoscaling=true describes a cluster joined by address that adds nodes on demand; an "
                          "embedded cluster never grows: set ray.address (or RAY_ADDRESS), or ray.autoscaling=false")
    prepare_process(cfg)
    import ray

    if ray.is_initialized():
        info = _info("cluster" if _resolved_address(cfg) else "embedded", _resolved_address(cfg) or "local")
        return replace(info, started_here=False)
    started = time.perf_counter()
    address = _resolved_address(cfg)
    if address:
        runtime_env = joined_runtime_env()
        wait_reachable(address, cfg.connect_timeout_s)
        try:
            ray.init(address=address, namespace=cfg.namespace, runtime_env=runtime_env,
                     log_to_driver=True, logging_level=logging.WARNING)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own errors here
            hint = "" if os.environ.get("RAY_AUTH_MODE") == "token" else \
                "; if the cluster uses token authentication, run with RAY_AUTH_MODE=token and its token in " \
                "~/.ray/auth_token or RAY_AUTH_TOKEN"
            raise ClusterUnreachable(f"could not join the Ray cluster at {address!r}: {exc}{hint}") from exc
        info = _info("cluster", address)
    else:
        # address="local": always a fresh cluster, never one a `ray start` left running on this machine.
        # Its processes are this driver's children, so its workers inherit the environment prepare_process set,
        # and need no runtime_env for it. A runtime_env of any kind makes each worker start
        # through Ray's setup_worker.py, a Python start with Ray's imports before the worker's own: an actor's
        # process took 0.58 s of CPU to come up instead of 0.29 s (measured here, three actors each way). So a job
        # has one only for the setup hook Ray Train's workers need without a dashboard (cluster/quiet_logs.py).
        runtime_env = {"worker_process_setup_hook": "cluster.quiet_logs.quiet_embedded_cluster_workers"} \
            if ray_train and not cfg.include_dashboard else None
        # Ray would start one idle worker per logical CPU for the first driver (8 on the tiny config), each
        # importing Ray at once: seconds of CPU, on a small machine the seconds the roles need to load, for
        # workers most jobs never use. A job's actors start their own workers as they are created instead
        # (paired 0.4M GRPO runs on 2 cores: 2-3 s less from command to exit).
        ray.init(address="local", num_cpus=cfg.num_cpus, namespace=cfg.namespace, runtime_env=runtime_env,
                 include_dashboard=cfg.include_dashboard, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING, configure_logging=True,
                 _system_config={"prestart_worker_first_driver": False, **SOCKET_RETRIES})
        info = _info("embedded", "local")
    log.info("Ray %s at %s in %.1f s: %.0f CPUs, %.0f GPUs", info.mode, info.address, time.perf_counter() - started,
             info.num_cpus, info.num_gpus)
    atexit.register(stop)  # runs before Ray's own exit hook, which then finds nothing left to do
    return info


def joined_runtime_env() -> dict:
    """The runtime_env of a job that joins a cluster by address: workers on other nodes do not inherit this
    driver's environment, so it carries the worker defaults, less any variable the submitted job's own runtime_env
    sets (`ray job submit --runtime-env-json`): Ray refuses to merge two runtime_envs that name the same variable
    (ray.init fails), and the submitted value is the one its user chose."""
    submitted = _submitted_env_vars()
    return {"env_vars": {k: os.environ[k] for k in WORKER_ENV if k not in submitted}}


def _submitted_env_vars() -> set[str]:
    """The variables of the runtime_env `ray job submit` hands this driver (Ray's RAY_JOB_CONFIG_JSON_ENV_VAR)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    try:
        return set(((json.loads(raw) or {}).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):  # not Ray's JSON: Ray reports it itself when ray.init reads it
        return set()


def _resolved_address(cfg: RayConfig) -> str | None:
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def _info(mode: str, address: str) -> RuntimeInfo:
    import ray

    resources = ray.cluster_resources()
    return RuntimeInfo(mode, address, resources.get("CPU", 0.0), resources.get("GPU", 0.0))


def stop() -> None:
    """Disconnect from the cluster, ending an embedded one's processes; idempotent, and run at exit (start).

    Ray's own exit hook sleeps 0.5 s for worker logs to print, and it ends the autoscaler monitor after the GCS
    the monitor reports to: the monitor's SIGTERM handler then waits on the gone GCS through the whole second of
    grace Ray gives it, and is SIGKILLed after all (1.4 s of a 1.45 s shutdown, measured). Here it is SIGKILLed
    first, which is how it ends either way, and the rest of the cluster ends as Ray ends it (0.35 s)."""
    import ray

    if not ray.is_initialized():
        return
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    node = getattr(worker, "_global_node", None)  # Ray's handle on the processes it started; none it can end if joined
    if node is not None and hasattr(node, "kill_monitor"):
        node.kill_monitor(check_alive=False)
    ray.shutdown()
