"""Operator view of a PPO run: where each role's actors run, whether they are alive, and how far and how fast
the run has got.

    python -m jobs.status --config configs/tiny-cpu.yaml [section.key=value ...] [--address ADDR] [--json]
    python -m jobs.status --run-dir outputs/tiny-cpu/ppo --address http://HEAD:8265

Reads the run's folder (roles.json: role, rank, actor, node, pid of every actor; metrics.jsonl: step and
timings; faults.jsonl: replaced engines and restarts; checkpoints/). With a cluster address (--address,
ray.address or RAY_ADDRESS; the dashboard URL or the GCS host:port) each actor's live state and restart count
come from Ray's state API; without one the roster shows where the actors were last seen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common.config import load_config
from common.errors import ConfigError
from jobs import cli

THROUGHPUT_WINDOW = 5  # steps averaged for the throughput line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.status", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="YAML", help="the run's recipe: names its folder (run.output_root, "
                                                          "run.name) and maybe its cluster (ray.address)")
    p.add_argument("--run-dir", metavar="DIR", help="the run's PPO folder, instead of the one the config names")
    p.add_argument("--address", metavar="ADDR", help="the cluster, for live actor states: dashboard URL "
                                                     "(http://HEAD:8265) or GCS address (HEAD:6379)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. run.name=x")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"ray.address={args.address}"] if args.address else [])
    cfg = load_config(args.config, overrides)
    from cluster.runtime import prepare_process

    prepare_process(cfg.ray)  # token auth for the state API client, before Ray is imported
    run_dir = Path(args.run_dir) if args.run_dir else cfg.run.output_dir("ppo")
    status = gather(run_dir, cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    print(json.dumps(status, indent=2) if args.json else render(status))
    return status


def gather(run_dir: Path, address: str | None) -> dict:
    from actors.fault import read_faults
    from actors.roster import read_roster
    from common.metrics import read_jsonl

    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist; pass --run-dir or the run's --config")
    roster = read_roster(run_dir) or {"actors": []}
    rows = read_jsonl(run_dir / "metrics.jsonl")
    actors, live_error = _with_live_state(roster["actors"], address)
    return {"run_dir": str(run_dir), "run": roster.get("run"), "rollout_engine": roster.get("rollout_engine"),
            "rollout_weights": roster.get("rollout_weights"),
            "progress": progress(run_dir, rows, roster),
            # Rosters written before samples_per_prompt existed hold rollout_batch_size only (one answer each).
            "throughput": throughput(rows, roster.get("sequences_per_step", roster.get("rollout_batch_size"))),
            "weight_sync": weight_sync(rows),
            "faults": read_faults(run_dir),
            "actors": actors, "live_state": live_error or f"from the cluster at {address}"}


def progress(run_dir: Path, rows: list[dict], roster: dict) -> dict:
    metrics = run_dir / "metrics.jsonl"
    checkpoints = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")
                         if (p / "state.json").exists())
    return {"step": rows[-1]["step"] if rows else 0, "steps": roster.get("steps"),
            "last_checkpoint": checkpoints[-1] if checkpoints else None,
            "seconds_since_last_step": time.time() - metrics.stat().st_mtime if metrics.exists() else None}


def throughput(rows: list[dict], sequences_per_step: int | None) -> dict:
    recent = [row for row in rows[-THROUGHPUT_WINDOW:] if "time/step" in row]
    if not recent:
        return {}
    seconds = statistics.fmean(row["time/step"] for row in recent)
    result = {"seconds_per_step": seconds, "steps_per_hour": 3600.0 / seconds if seconds else None,
              "rollout_tokens_per_s": statistics.fmean(row.get("rollout_tokens_per_s", 0.0) for row in recent)}
    if sequences_per_step:
        result["samples_per_s"] = sequences_per_step / seconds if seconds else None
    return result


def weight_sync(rows: list[dict]) -> dict:
    """How the logged steps' weights reached the engines: over the broadcast group (sync/collective = 1) or through
    the object store (by choice, or the fallback after a failed broadcast)."""
    logged = [row["sync/collective"] for row in rows if "sync/collective" in row]
    return {"steps": len(logged), "over_group": int(sum(logged))}


def _with_live_state(actors: list[dict], address: str | None) -> tuple[list[dict], str | None]:
    """Each roster entry with its state and restart count from Ray's state API; the reason when unavailable."""
    if not address:
        return [{**a, "state": "unknown"} for a in actors], "no cluster address: state as last recorded"
    try:
        from ray.util.state import list_actors

        live = {a.actor_id: a for a in list_actors(address=address, limit=10_000, raise_on_missing_output=False)}
    except Exception as exc:  # the state API raises several kinds of connection and server errors
        return [{**a, "state": "unknown"} for a in actors], f"state API at {address} unavailable: {exc}"
    merged = []
    for actor in actors:
        found = live.get(actor["actor_id"])
        merged.append({**actor, "state": found.state if found else "GONE",
                       "num_restarts": found.num_restarts if found else None})
    return merged, None


def render(status: dict) -> str:
    prog, speed = status["progress"], status["throughput"]
    total = f" of {prog['steps']}" if prog["steps"] else ""
    lines = [f"PPO run {status['run'] or '?'} in {status['run_dir']}",
             f"  step {prog['step']}{total}, last checkpoint: {prog['last_checkpoint'] or 'none'}"
             + (f", last step {prog['seconds_since_last_step']:.0f} s ago"
                if prog["seconds_since_last_step"] is not None else "")]
    if speed:
        lines.append(f"  {speed['seconds_per_step']:.2f} s/step"
                     + (f", {speed['samples_per_s']:.1f} samples/s" if speed.get("samples_per_s") else "")
                     + f", {speed['rollout_tokens_per_s']:.0f} rollout tokens/s (last {THROUGHPUT_WINDOW} steps)")
    sync = status.get("weight_sync") or {}
    if sync.get("over_group"):
        lines.append(f"  weight sync: over the broadcast group at {sync['over_group']} of {sync['steps']} steps"
                     + ("" if sync["over_group"] == sync["steps"] else ", the others through Ray's object store"))
    elif sync.get("steps"):
        lines.append("  weight sync: through Ray's object store")
    if status["faults"]:
        counts: dict[str, int] = {}
        for fault in status["faults"]:
            counts[fault["event"]] = counts.get(fault["event"], 0) + 1
        lines.append("  faults: " + ", ".join(f"{n} × {event}" for event, n in counts.items()) + " (faults.jsonl)")
    if status.get("rollout_engine"):
        weights = f" ({status['rollout_weights']} weights)" if status.get("rollout_weights") else ""
        lines.append(f"  rollout engine: {status['rollout_engine']}{weights}")
    lines.append(f"  actor state: {status['live_state']}")
    header = ("role", "rank", "state", "node", "ip", "pid", "actor")
    table = [header] + [(a["role"], str(a["rank"]), a["state"], a["node_id"][:12], a.get("node_ip") or "?",
                         str(a["pid"]), a.get("name") or a["actor_id"][:12]) for a in status["actors"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines.extend(("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths))).rstrip() for row in table)
    nodes = sorted({a["node_id"] for a in status["actors"]})
    lines.append(f"  {len(nodes)} node(s): " + "; ".join(_node_summary(node, status["actors"]) for node in nodes))
    return "\n".join(lines)


def _node_summary(node: str, actors: list[dict]) -> str:
    here = [a for a in actors if a["node_id"] == node]
    roles: dict[str, int] = {}
    for actor in here:
        roles[actor["role"]] = roles.get(actor["role"], 0) + 1
    return f"{node[:12]} ({here[0].get('node_ip') or '?'}): " + ", ".join(f"{r} ×{n}" for r, n in roles.items())


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.status", main))
