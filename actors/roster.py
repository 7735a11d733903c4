"""The run's roster: which actor holds which role and rank, on which node, in which process.

The PPO driver writes <output>/roles.json when its roles come up and again whenever one is replaced; the
operator view (`python -m jobs.status`) reads it to show where a run lives and, with a cluster address,
whether each actor is still alive.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common.durable import write_atomically

ROSTER_FILE = "roles.json"


def roster_entries(groups: dict, reward_actor=None) -> list[dict]:
    """One entry per actor of the started role groups (role → RoleGroup, or None for a role not started) and the
    reward-model actor if any: role, rank, name, actor id, node id, node IP, pid."""
    import ray

    entries = [entry for group in groups.values() if group is not None for entry in group.roster()]
    if reward_actor is not None:
        entries.append({"role": "reward", "rank": 0, "name": None, **ray.get(reward_actor.placement_info.remote())})
    # The address each node registered with (loopback in tests), not whatever interface the actor sees first.
    node_ips = {node["NodeID"]: node["NodeManagerAddress"] for node in ray.nodes()}
    return [{**entry, "node_ip": node_ips.get(entry["node_id"])} for entry in entries]


def write_roster(output_dir: str | Path, run: dict, groups: dict, reward_actor=None) -> Path:
    """roles.json: `run` (what the operator view shows about the run: name, steps, batch sizes, engine) and every
    actor's entry; written atomically."""
    path = Path(output_dir) / ROSTER_FILE
    write_atomically(path, json.dumps({**run, "updated": time.time(), "actors": roster_entries(groups, reward_actor)},
                                      indent=2))
    return path


def read_roster(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / ROSTER_FILE
    return json.loads(path.read_text()) if path.is_file() else None
