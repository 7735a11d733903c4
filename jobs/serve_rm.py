"""Serve a trained reward model over HTTP on Ray Serve; blocks until Ctrl-C.

    python -m jobs.serve_rm --config configs/tiny-cpu.yaml [serve.port=8000 serve.model_path=DIR ...]
    serve run serve/serve_config.yaml          (the same application from a Serve config file)

Serves serve.model_path, or by default the reward model the same config trains with jobs.train_rm
(<run.output_root>/<run.name>/reward_model/model). Endpoints: POST /score, POST /get_reward, GET /healthz,
GET /stats, GET /docs. Set the env var named by serve.auth_token_env (or serve.auth_token_file) to require
a bearer token.
"""

from __future__ import annotations

import os
import sys
import time

from common.config import Config
from jobs import cli
from serve.proxy_limits import LIMIT_ENV

SECTIONS = ("run", "ray", "reward_model", "serve")


def serve_forever(cfg: Config) -> None:
    from ray import serve

    from cluster import runtime
    from common.model_dir import check_model_dir
    from serve import reward_app

    # Before Ray starts: a wrong path, or an open service on a reachable host, fails in a second.
    check_model_dir(reward_app.served_model_path(cfg), what="serve.model_path")
    reward_app.check_exposure(cfg)
    # The proxy's own body limit (serve/proxy_limits.py) follows serve.max_request_bytes on a cluster this job
    # starts; a `ray start` cluster takes it from its nodes' environment.
    os.environ[LIMIT_ENV] = str(cfg.serve.max_request_bytes)
    info = runtime.start(cfg.ray)
    try:
        url = reward_app.deploy(cfg)
        print(f"reward model {reward_app.served_model_path(cfg)} is served at {url} "
              f"(POST /score, POST /get_reward, GET /healthz, docs at {url}/docs); Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the reward service", file=sys.stderr)
    finally:
        # On a shared cluster only our application goes; an embedded cluster goes entirely.
        if info.mode == "cluster":
            serve.delete(cfg.serve.app_name)
        else:
            serve.shutdown()
        runtime.stop()


def main(argv: list[str] | None = None) -> None:
    cfg, _ = cli.parse("python -m jobs.serve_rm", __doc__.split("\n\n")[0], SECTIONS, argv)
    serve_forever(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.serve_rm", main))
