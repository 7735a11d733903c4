"""Reward-service throughput on CPU: requests/s and p50/p99 latency at 1, 8 and 64 concurrent HTTP clients,
with dynamic batching (serve.max_batch_size from the config, 32 by default) against max_batch_size=1, both
deployed side by side on the same Ray Serve in this process; prints a table with the batched/unbatched
ratio and writes the numbers as JSON under bench/results/.

    python bench/reward_serving.py [--backbone tiny|minilm | --model DIR] [--requests 256] [--time-limit 60]

Loopback only. Each level is bounded (at most --requests requests, no new request after --time-limit
seconds); the run exits 1 unless every request sent was answered with 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = (1, 8, 64)
PROMPTS = ["Name a colour.", "Say something kind.", "What is 2 + 2?", "Tell me a short story about a cat."]
RESPONSES = ["Blue.", "You are doing great!", "Four.", "Once upon a time a cat found a warm spot in the sun."]


@dataclass
class Level:
    mode: str
    clients: int
    sent: int
    ok: int  # answered 200 with one score
    http_errors: int  # answered, but not with a score
    lost: int  # never answered (connection error or timeout)
    served: int  # scored by the replica, from its /stats
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch_size: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def build_model_dir(backbone: str, folder: Path) -> str:
    """A reward model with a seeded, untrained scalar head: serving cost does not depend on training."""
    import torch

    from actors import reward
    from actors.zero_trainer import save_hf_model
    from common.config import DEFAULT_POLICY, resolve_path

    path = reward.BACKBONE_SHORTHANDS["minilm"]() if backbone == "minilm" else str(resolve_path(DEFAULT_POLICY))
    fmt = reward.read_input_format(path)
    torch.manual_seed(0)
    tokenizer = reward.load_reward_tokenizer(path, fmt)
    return save_hf_model(reward.load_sequence_classifier(path, tokenizer.pad_token_id), tokenizer, folder / "model")


def deploy(model_dir: str, port: int, max_batch_size: int) -> dict[str, str]:
    """The batched and the unbatched application side by side (one 1-CPU replica each)."""
    from ray import serve

    from common.config import load_config
    from serve.reward_app import reward_application

    serve.start(http_options={"host": HOST, "port": port})
    urls = {}
    for mode, batch in (("batched", max_batch_size), ("unbatched", 1)):
        cfg = load_config(None, [f"serve.model_path={model_dir}", f"serve.max_batch_size={batch}"])
        serve.run(reward_application(cfg), name=f"rm-{mode}", route_prefix=f"/{mode}")
        urls[mode] = f"http://{HOST}:{port}/{mode}"
    return urls


async def one_client(session, url: str, index: int, count: int, deadline: float, latencies: list, tally: dict):
    import aiohttp

    for n in range(count):
        if time.monotonic() > deadline:
            return
        body = {"prompts": [PROMPTS[(index + n) % 4]], "responses": [RESPONSES[(index + n) % 4]]}
        tally["sent"] += 1
        started = time.perf_counter()
        try:
            async with session.post(f"{url}/score", json=body) as response:
                payload = await response.json(content_type=None)
                outcome = "ok" if response.status == 200 and len(payload.get("scores", [])) == 1 else "http_errors"
        except (aiohttp.ClientError, asyncio.TimeoutError):
            outcome = "lost"
        latencies.append(time.perf_counter() - started)
        tally[outcome] += 1


async def run_level(url: str, mode: str, clients: int, total: int, time_limit: float) -> Level:
    import aiohttp

    stats_before = await fetch_stats(url)
    latencies: list[float] = []
    tally = {"sent": 0, "ok": 0, "http_errors": 0, "lost": 0}
    per_client = max(1, total // clients)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        started = time.perf_counter()
        deadline = time.monotonic() + time_limit
        await asyncio.gather(*(one_client(session, url, i, per_client, deadline, latencies, tally)
                               for i in range(clients)))
        seconds = time.perf_counter() - started
    stats_after = await fetch_stats(url)
    batches = stats_after["batches"] - stats_before["batches"]
    served = stats_after["requests"] - stats_before["requests"]
    ms = sorted(1000 * x for x in latencies)
    return Level(mode, clients, tally["sent"], tally["ok"], tally["http_errors"], tally["lost"], served, seconds,
                 tally["ok"] / seconds, percentile(ms, 50), percentile(ms, 99), served / max(batches, 1))


def percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]


async def fetch_stats(url: str) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{url}/stats") as response:
        return await response.json()


async def bench(urls: dict[str, str], total: int, time_limit: float) -> list[Level]:
    for url in urls.values():  # warm-up: first-request costs (tokenizer caches, lazy init) stay out of the timing
        await run_level(url, "warmup", 4, 16, time_limit)
    levels = []
    for clients in CONCURRENCY:
        for mode, url in urls.items():
            level = await run_level(url, mode, clients, total, time_limit)
            print(f"  {mode:9s} {clients:3d} clients: {level.requests_per_s:7.1f} req/s, p50 {level.p50_ms:7.1f} ms, "
                  f"p99 {level.p99_ms:7.1f} ms, mean batch {level.mean_batch_size:5.1f}", flush=True)
            levels.append(level)
    return levels


def table(levels: list[Level]) -> str:
    by = {(lv.mode, lv.clients): lv for lv in levels}
    lines = ["clients | batched req/s  p50 ms  p99 ms  batch | unbatched req/s  p50 ms  p99 ms | req/s ratio",
             "--------|-------------------------------------|--------------------------------|------------"]
    for clients in CONCURRENCY:
        b, u = by[("batched", clients)], by[("unbatched", clients)]
        lines.append(f"{clients:7d} | {b.requests_per_s:13.1f} {b.p50_ms:7.1f} {b.p99_ms:7.1f} "
                     f"{b.mean_batch_size:6.1f} | {u.requests_per_s:15.1f} {u.p50_ms:7.1f} {u.p99_ms:7.1f} | "
                     f"{b.requests_per_s / u.requests_per_s:10.2f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=["tiny", "minilm"], default="tiny",
                        help="seeded reward head on the tiny policy (0.4M params) or MiniLM (22.7M)")
    parser.add_argument("--model", help="serve this trained reward-model folder instead")
    parser.add_argument("--requests", type=int, default=256, help="requests per level and mode (upper bound)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level and mode (upper bound)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batched mode's serve.max_batch_size")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the embedded Ray")
    args = parser.parse_args()

    from ray import serve

    from cluster import runtime
    from common.config import RayConfig

    runtime.start(RayConfig(num_cpus=args.num_cpus))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = args.model or build_model_dir(args.backbone, Path(tmp))
            urls = deploy(model_dir, free_port(), args.max_batch_size)
            print(f"reward serving bench: {args.model or args.backbone} on {os.cpu_count()} CPU cores, "
                  f"{args.requests} requests / {args.time_limit:.0f} s max per level", flush=True)
            levels = asyncio.run(bench(urls, args.requests, args.time_limit))
    finally:
        serve.shutdown()
        runtime.stop()
    print(table(levels))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"reward_serving-{'model' if args.model else args.backbone}.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "model": args.model or args.backbone,
                               "cpu_cores": os.cpu_count(), "machine": platform.platform(),
                               "max_batch_size": args.max_batch_size, "levels": [asdict(lv) for lv in levels]},
                              indent=2))
    print(f"results: {out}")
    failed = [lv for lv in levels if lv.http_errors or lv.lost or not lv.sent == lv.ok == lv.served]
    if failed:
        print(f"FAILED: errors or lost requests in {[(lv.mode, lv.clients) for lv in failed]}", file=sys.stderr)
        return 1
    print(f"all {sum(lv.sent for lv in levels)} requests answered with 200, zero errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
