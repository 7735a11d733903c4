"""What every worker process of the embedded cluster gets from runtime.start."""

import logging

import ray


@ray.remote(num_cpus=0)
def messages_that_reach_handlers(logger_name: str, messages: list[str]) -> list[str]:
    logger = logging.getLogger(logger_name)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        for message in messages:
            logger.warning(message)
    finally:
        logger.removeHandler(handler)
    return seen


def test_workers_drop_the_cleaners_state_api_warning_and_nothing_else(ray_session):
    """With no dashboard there is no State API, so Ray Train's placement-group cleaner would warn every few
    seconds all run long; the setup hook drops that line in every worker, and only that line."""
    from cluster.quiet_logs import PLACEMENT_GROUP_CLEANER

    other = "Failed to clean up placement group: boom"
    seen = ray.get(messages_that_reach_handlers.remote(PLACEMENT_GROUP_CLEANER.logger,
                                                       [PLACEMENT_GROUP_CLEANER.message, other]))
    assert seen == [other]


STOP_SCRIPT = """
import ray
from cluster import runtime
from common.config import RayConfig

first = runtime.start(RayConfig(num_cpus=1))
again = runtime.start(RayConfig(num_cpus=1))  # Ray is up already: this start is not the one to stop it


@ray.remote(num_cpus=0)
def seen():
    import json
    import os

    return os.environ.get("VLLM_CPU_KVCACHE_SPACE"), json.dumps(dict(ray.get_runtime_context().runtime_env))


print("WORKER", *ray.get(seen.remote()))
processes = [info.process for infos in ray._private.worker._global_node.all_processes.values() for info in infos]
runtime.stop()
runtime.stop()  # idempotent
print(first.started_here, again.started_here, ray.is_initialized(), len(processes),
      [p.poll() is None for p in processes].count(True))
"""


def test_stop_ends_every_process_the_embedded_cluster_started():
    """A start that found Ray up says so (a job then leaves the cluster to whoever started it); workers inherit the
    driver's environment without a runtime_env. runtime.stop ends the autoscaler monitor itself before Ray's
    shutdown ends the rest; nothing Ray started (raylet, GCS, monitor, log monitor, dashboard agent) may outlive
    it."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", STOP_SCRIPT], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    first, again, initialized, started, alive = out.stdout.split()[-5:]
    assert (first, again) == ("True", "False"), out.stdout
    # A job outside Ray Train gives the embedded cluster no runtime_env (each worker would start through Ray's
    # setup_worker.py first): its workers inherit the environment the driver set.
    assert "WORKER 1 {}" in out.stdout, out.stdout
    assert (initialized, alive) == ("False", "0") and int(started) >= 4, out.stdout


@ray.remote(num_cpus=0)
def environment_of_a_worker(names: list[str]) -> dict:
    import os

    return {name: os.environ.get(name) for name in names}


def test_workers_get_the_embedded_ray_train_settings(ray_session):
    """Ray Train's controller (a worker like any other) polls every 0.25 s and starts no preemption watcher on
    the embedded cluster; a value the user exported wins."""
    import os

    from cluster.runtime import EMBEDDED_TRAIN_ENV

    expected = {name: os.environ.get(name, value) for name, value in EMBEDDED_TRAIN_ENV.items()}
    assert ray.get(environment_of_a_worker.remote(list(EMBEDDED_TRAIN_ENV))) == expected
    assert EMBEDDED_TRAIN_ENV == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def test_the_embedded_raylet_retries_its_socket_connects_every_tenth_of_a_second(ray_session):
    """The cluster's system config carries the retry settings (cluster/runtime.py, SOCKET_RETRIES; the GCS holds it
    and the raylet reads it from there): a raylet that loses the race to its own object store waits 0.1 s instead of
    Ray's 1 s, and a connect still gives up after 10 s as with Ray's defaults."""
    import base64
    import json

    from ray._private import ray_constants, worker

    from cluster.runtime import SOCKET_RETRIES

    gcs = worker._global_node.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER][0].process.pid
    with open(f"/proc/{gcs}/cmdline", "rb") as cmdline:
        args = cmdline.read().decode().split("\0")
    encoded = next(arg.split("=", 1)[1] for arg in args if arg.startswith("--config_list="))
    config = json.loads(base64.b64decode(encoded))
    assert {key: config.get(key) for key in SOCKET_RETRIES} == SOCKET_RETRIES
    assert SOCKET_RETRIES["raylet_client_connect_timeout_milliseconds"] * \
        SOCKET_RETRIES["raylet_client_num_connect_attempts"] == 10_000  # Ray's defaults: 1,000 ms × 10
