"""Serve a trained policy OpenAI-compatibly on Ray Serve LLM; blocks until Ctrl-C.

    python -m jobs.serve_policy --model DIR [--model-id NAME] [--host H] [--port P] [--token-file F]
                                [--config YAML] [serve_policy.key=value ...]

DIR is a Hugging Face model folder: an exported policy (jobs.ppo / jobs.dpo / jobs.sft write one) or any causal LM
vLLM knows. Endpoints: GET /v1/models, POST /v1/chat/completions (OpenAI's request and response bodies; point an
OpenAI client at http://HOST:PORT/v1), GET /healthz, GET /docs. With a token (--token-file, or the env var named by
serve_policy.auth_token_env, RAYALIGN_POLICY_TOKEN by default) clients send it as their API key.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.config import Config
from jobs import cli

SECTIONS = ("run", "ray", "serve_policy")
# Flags for the settings one changes most; each is also a serve_policy.<key> override.
FLAGS = {"model": "model_path", "model_id": "model_id", "host": "host", "port": "port", "token_file": "auth_token_file"}


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="Hugging Face model folder to serve (serve_policy.model_path)")
    p.add_argument("--model-id", metavar="NAME", help="model name clients send and /v1/models lists "
                                                      "(serve_policy.model_id; default: the folder's name)")
    p.add_argument("--host", metavar="HOST", help="HTTP bind address (serve_policy.host; default 127.0.0.1: only this "
                                                  "machine; any other host needs a token)")
    p.add_argument("--port", metavar="PORT", help="HTTP port (serve_policy.port; default 8001)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the bearer token clients must send "
                                                        "(serve_policy.auth_token_file)")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags as serve_policy overrides, text flags quoted: an override's value is read as YAML, which made
    --model-id 007 the number 7, --model-id on a boolean and --token-file null no token file at all."""
    return [f"serve_policy.{key}={getattr(args, flag) if key == 'port' else json.dumps(getattr(args, flag))}"
            for flag, key in FLAGS.items() if getattr(args, flag) is not None]


def serve_forever(cfg: Config) -> None:
    from jobs.serving import serve_until_interrupted
    from serve import policy_rules

    # Before Ray (and vLLM) load: a wrong folder, a missing token file or an open service on a reachable host fails
    # at once.
    policy_rules.check_exposure(cfg)
    settings = policy_rules.policy_settings(cfg)

    def deploy() -> str:
        from serve import policy_app

        return policy_app.deploy(cfg)

    serve_until_interrupted(
        cfg.ray, cfg.serve_policy.app_name, cfg.serve_policy.max_request_bytes, deploy,
        lambda url: (f"policy {settings.model_path} is served as model {settings.model_id!r} at {url} (OpenAI API: "
                     f"GET /models, POST /chat/completions); Ctrl-C stops"), "policy service")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # The flags become overrides before the config loads, so its checks (e.g. the port's range) cover them too.
    flags, rest = _flag_parser().parse_known_args(argv)
    cfg, _ = cli.parse("python -m jobs.serve_policy", __doc__.split("\n\n")[0], SECTIONS,
                       rest + flag_overrides(flags), extend=add_flags)
    serve_forever(cfg)


def _flag_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_flags(p)
    return p


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.serve_policy", main))
