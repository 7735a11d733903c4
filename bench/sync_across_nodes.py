"""The weight sync between two Ray nodes: Ray's object store against the collective path (a gloo group), policy
on one node and the rollout engine on the other. Not a test.

    .venv/bin/python bench/sync_across_nodes.py [--sizes 8,32,100] [--engines hf,vllm]

The two nodes are simulated on this machine (ray.cluster_utils.Cluster, as tests/ray/multinode_scenarios.py does):
each has its own raylet and object store, so an object the policy puts is pulled by the engine's node through
Ray's object manager, as between machines, and the gloo group connects the two processes over TCP. Both go over
loopback here, so the figures are the transports' own costs, without a real network's bandwidth. Same timing as
bench/ppo_step.py's sync section (bench_sync); results in bench/results/sync_across_nodes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Before Ray loads: keep the simulated nodes on loopback, and every node in the token mode the driver joins with.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")

# Each node's object store is sized to hold a few syncs of the largest model, as a real node's (30% of its memory)
# would: the test cluster's default of 150 MiB spills buckets to disk (measured: 3.2 s a sync at 108M).
STORE_BYTES = 2 << 30
NODES = {"train": {"num_cpus": 1, "resources": {"train_node": 1}, "object_store_memory": STORE_BYTES},
         "rollout": {"num_cpus": 1, "resources": {"rollout_node": 1}, "object_store_memory": STORE_BYTES}}


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    from bench.ppo_step import RESULTS, bench_sync, copy_bandwidth
    from common.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,32,100", help="parameter counts in millions (0.4, 8, 32, 100)")
    parser.add_argument("--engines", default="hf,vllm", help="rollout engines the sync loads into")
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False, "num_cpus": 0})
    for node in NODES.values():
        cluster.add_node(node_ip_address="127.0.0.1", **node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        cfg = load_config(REPO / "configs" / "tiny-cpu.yaml")
        copy_gb_s = copy_bandwidth()
        rows = bench_sync(cfg, [float(s) for s in args.sizes.split(",")], args.engines.split(","), copy_gb_s,
                          node_resources={"policy": "train_node", "rollout": "rollout_node"})
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"weight sync across two nodes on one machine (one-thread copy {copy_gb_s:.1f} GB/s):")
    for row in rows:
        print(f"  {row['engine']:<4} {row['transport']:<12} {row['params'] / 1e6:7.2f} M params  "
              f"{row['seconds']:7.3f} s  {row['gb_per_s']:6.2f} GB/s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sync_across_nodes.json").write_text(json.dumps({"copy_gb_per_s": copy_gb_s, "sync": rows}, indent=2))


if __name__ == "__main__":
    main()
