"""The reward service under load (issue 17), measured on this machine. Not a test.

    .venv/bin/python bench/reward_load.py [--clients 1,8,64] [--seconds 20] [--replicas 1]

Serves a reward model (the tiny policy with a seeded scalar head, as the serving tests build it) on real Ray
Serve over HTTP on 127.0.0.1 with a bearer token, then for each client count runs that many threads posting
/score requests (one prompt + response each) back to back for --seconds. Printed per level: requests sent,
answered, errors (any non-200 or transport failure), lost (sent but never answered), requests/s, p50/p99
latency, and requests/s as a ratio to the single-client baseline measured in the same run (what the server-side
batching buys). Writes bench/results/reward_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"
TOKEN = "load-test-token"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def level(url: str, clients: int, seconds: float) -> dict:
    """`clients` threads posting back to back until the deadline; every request is accounted for."""
    import requests

    sent, answered, errors, latencies = [0], [0], [], []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        body = {"prompts": [f"Tell me about the number {index}."], "responses": ["It is a fine number."]}
        while time.perf_counter() < deadline:
            with lock:
                sent[0] += 1
            started = time.perf_counter()
            try:
                response = session.post(f"{url}/score", json=body, timeout=60,
                                        headers={"Authorization": f"Bearer {TOKEN}"})
                ok = response.status_code == 200 and len(response.json()["scores"]) == 1
                problem = None if ok else f"{response.status_code}: {response.text[:100]}"
            except Exception as exc:  # a transport failure is an error to count, not to stop on
                problem = f"{type(exc).__name__}: {exc}"
            with lock:
                answered[0] += problem is None
                latencies.append(time.perf_counter() - started)
                if problem is not None:
                    errors.append(problem)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "sent": sent[0], "answered": answered[0], "errors": len(errors),
            "lost": sent[0] - answered[0] - len(errors), "requests_per_s": answered[0] / wall,
            "p50_ms": 1e3 * percentile(latencies, 0.5), "p99_ms": 1e3 * percentile(latencies, 0.99),
            "mean_ms": 1e3 * statistics.fmean(latencies) if latencies else float("nan"), "first_errors": errors[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,64", help="comma-separated client counts (default 1,8,64)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per level (default 20)")
    parser.add_argument("--replicas", type=int, default=1, help="serve.num_replicas (default 1)")
    args = parser.parse_args()
    from ray import serve

    from cluster import runtime
    from common.config import RayConfig, load_config
    from serve import reward_app
    from tests.helpers import free_port
    from tests.reward_helpers import make_reward_dir

    runtime.start(RayConfig(num_cpus=8))
    found = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            token_file = Path(tmp) / "token"
            token_file.write_text(TOKEN)
            cfg = load_config(REPO / "configs" / "tiny-cpu.yaml", [
                f"serve.model_path={make_reward_dir(Path(tmp) / 'rm')}", f"serve.port={free_port()}",
                f"serve.auth_token_file={token_file}", f"serve.num_replicas={args.replicas}",
                "reward_model.max_length=256"])
            url = reward_app.deploy(cfg)
            level(url, 1, 2.0)  # warm-up: the replica's first batches compile and allocate
            for clients in (int(c) for c in args.clients.split(",")):
                found.append(level(url, clients, args.seconds))
                r = found[-1]
                print(f"{clients:3d} clients: {r['answered']} answered of {r['sent']} sent, {r['errors']} errors, "
                      f"{r['lost']} lost, {r['requests_per_s']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, "
                      f"p99 {r['p99_ms']:.0f} ms", flush=True)
    finally:
        serve.shutdown()
        runtime.stop()
    base = found[0]["requests_per_s"]
    for r in found:
        r["vs_first_level"] = r["requests_per_s"] / base
        print(f"{r['clients']:3d} clients: {r['vs_first_level']:.2f}x the requests/s of {found[0]['clients']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "reward_load.json"
    path.write_text(json.dumps({"seconds": args.seconds, "replicas": args.replicas, "levels": found}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
