"""Serve a trained reward model over HTTP on Ray Serve; blocks until Ctrl-C.

    python -m jobs.serve_rm --config configs/tiny-cpu.yaml [serve.port=8000 serve.model_path=DIR ...]
    serve run serve/serve_config.yaml          (the same application from a Serve config file)

Serves serve.model_path, or by default the reward model the same config trains with jobs.train_rm
(<run.output_root>/<run.name>/reward_model/model). Endpoints: POST /score, POST /get_reward, GET /healthz,
GET /stats, GET /docs. Set the env var named by serve.auth_token_env (or serve.auth_token_file) to require
a bearer token.
"""

from __future__ import annotations

import sys

from common.config import Config
from jobs import cli

SECTIONS = ("run", "ray", "reward_model", "serve")


def serve_forever(cfg: Config) -> None:
    from common.model_dir import check_model_dir
    from jobs.serving import serve_until_interrupted
    from serve import reward_app

    # Before Ray starts: a wrong path, or an open service on a reachable host, fails in a second.
    check_model_dir(reward_app.served_model_path(cfg), what="serve.model_path")
    reward_app.check_exposure(cfg)
    serve_until_interrupted(
        cfg.ray, cfg.serve.app_name, cfg.serve.max_request_bytes, lambda: reward_app.deploy(cfg),
        lambda url: (f"reward model {reward_app.served_model_path(cfg)} is served at {url} (POST /score, POST "
                     f"/get_reward, GET /healthz, docs at {url}/docs); Ctrl-C stops"), "reward service")


def main(argv: list[str] | None = None) -> None:
    cfg, _ = cli.parse("python -m jobs.serve_rm", __doc__.split("\n\n")[0], SECTIONS, argv)
    serve_forever(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.serve_rm", main))
