"""Submit a rayalign job to a Ray cluster with `ray job submit`, authentication handled.

    python -m jobs.submit --address http://HEAD:8265 -- python -m jobs.sft --config configs/tiny-cpu.yaml

Ray 2.60 clusters run with token authentication, but the `ray job submit` client only sends the token
when RAY_AUTH_MODE=token is set, and fails with "Missing authentication token" otherwise. This wrapper
turns token mode on when a token is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token),
uploads the checkout as the working directory, and passes everything after `--` as the entrypoint. It also
gives `ray job stop` a grace period (RAY_JOB_STOP_WAIT_TIME_S in the job's runtime env) long enough for a PPO
run to finish its step and checkpoint before it is killed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from cluster.runtime import enable_client_auth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS")
                        or os.environ.get("RAY_ADDRESS"),
                        help="the cluster's dashboard / jobs API, e.g. http://127.0.0.1:8265 "
                             "(default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS)")
    parser.add_argument("--working-dir", default=".", help="folder uploaded as the job's working directory")
    parser.add_argument("--no-wait", action="store_true", help="return after submitting instead of following logs")
    parser.add_argument("--stop-grace-s", type=int, default=600,
                        help="seconds `ray job stop` waits after SIGTERM before SIGKILL (Ray's default is 3): time for "
                             "PPO to finish its step and checkpoint (default: 600)")
    parser.add_argument("entrypoint", nargs=argparse.REMAINDER, help="-- python -m jobs.<name> ...")
    args = parser.parse_args(argv)
    entrypoint = args.entrypoint[1:] if args.entrypoint[:1] == ["--"] else args.entrypoint
    if not args.address or not entrypoint:
        parser.error("need --address (or RAY_API_SERVER_ADDRESS) and an entrypoint after --")
    enable_client_auth()
    ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
    command = [ray_cli, "job", "submit", "--address", args.address, "--working-dir", args.working_dir,
               "--runtime-env-json", json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(args.stop_grace_s)}})]
    if args.no_wait:
        command.append("--no-wait")
    os.execv(ray_cli, command + ["--", *entrypoint])
    return 0


if __name__ == "__main__":
    sys.exit(main())
