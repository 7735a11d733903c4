"""The run's roster: which actor holds which role and rank, on which node, in which process.

The PPO driver writes <output>/roles.json when its roles come up and again whenever one is replaced; the
operator view (`python -m jobs.status`) reads it to show where a run lives and, with a cluster address,
whether each actor is still alive.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROSTER_FILE = "roles.json"


def roster_entries(loop) -> list[dict]:
    """One entry per actor of a started PPO loop: role, rank, name, actor id, node id, node IP, pid."""
    import ray

    entries = []
    for name in ("rollout", "policy", "value", "reference"):
        group = getattr(loop, name, None)
        if group is not None:
            entries.extend(group.roster())
    reward_actor = getattr(loop.reward, "actor", None)  # only the reward-model source has an actor
    if reward_actor is not None:
        entries.append({"role": "reward", "rank": 0, "name": None,
                        **ray.get(reward_actor.placement_info.remote())})
    # The address each node registered with (loopback in tests), not whatever interface the actor sees first.
    node_ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    return [{**entry, "node_ip": node_ips.get(entry["node_id"])} for entry in entries]


def write_roster(loop) -> Path:
    path = Path(loop.output_dir) / ROSTER_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    ppo = loop.cfg.ppo
    tmp.write_text(json.dumps({"run": loop.cfg.run.name, "updated": time.time(), "steps": ppo.steps,
                               "rollout_batch_size": ppo.rollout_batch_size,
                               "sequences_per_step": ppo.sequences_per_step,
                               "rollout_engine": getattr(loop, "rollout_engine", None),
                               "actors": roster_entries(loop)},
                              indent=2))
    tmp.replace(path)
    return path


def read_roster(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / ROSTER_FILE
    return json.loads(path.read_text()) if path.is_file() else None
