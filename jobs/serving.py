"""What the serving jobs (jobs.serve_rm, jobs.serve_policy) share: start Ray with the proxy's body limit, deploy,
say where, serve until Ctrl-C, then take down what this job put up."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

from common.config import RayConfig
from serve.proxy_limits import LIMIT_ENV


def serve_until_interrupted(ray_cfg: RayConfig, app_name: str, max_request_bytes: int, deploy: Callable[[], str],
                            announce: Callable[[str], str], what: str) -> None:
    """deploy() returns the service's URL; announce(url) is the line printed once it serves."""
    from ray import serve

    from cluster import runtime

    # The proxy's own body limit (serve/proxy_limits.py) follows the section's max_request_bytes on a cluster this
    # job starts; a `ray start` cluster takes it from its nodes' environment.
    os.environ[LIMIT_ENV] = str(max_request_bytes)
    info = runtime.start(ray_cfg)
    try:
        print(announce(deploy()), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print(f"stopping the {what}", file=sys.stderr)
    finally:
        # On a shared cluster only our application goes; an embedded cluster goes entirely.
        if info.mode == "cluster":
            serve.delete(app_name)
        else:
            serve.shutdown()
        runtime.stop()
