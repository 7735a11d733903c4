"""Spawn N ranks of one role as Ray actors on a placement group and talk to them as one.

Training roles (policy, value) form their own torch.distributed world (gloo on CPU, NCCL on GPU) so that
DeepSpeed ZeRO shards across their ranks; the rendezvous address comes from rank 0's node.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch


class RoleFailure(RuntimeError):
    """A rank of a role died or raised; the message names the role, rank and method."""


class DistributedRole:
    """Mixin for a role class whose ranks share one process group."""

    def rendezvous_address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init_process_group(self, master_addr: str, master_port: int, rank: int, world_size: int) -> int:
        import deepspeed

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False, rank=rank, world_size=world_size,
                                   init_method=f"tcp://{master_addr}:{master_port}")
        return rank

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class RoleGroup:
    def __init__(self, role: str, cls: type, ranks: int, placement_group, bundle_indices: list[int],
                 cpus: float, gpus: float, init_args: tuple = (), distributed: bool = False):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.role = role
        remote_cls = ray.remote(cls)
        self.actors = [
            remote_cls.options(
                num_cpus=cpus, num_gpus=gpus, name=None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group, bundle_index),
            ).remote(*init_args)
            for bundle_index in bundle_indices[:ranks]
        ]
        if distributed:
            master_addr, master_port = self.call_rank0("rendezvous_address")
            self.get([actor.init_process_group.remote(master_addr, master_port, rank, ranks)
                      for rank, actor in enumerate(self.actors)], "init_process_group")

    def __len__(self) -> int:
        return len(self.actors)

    def get(self, refs: list, method: str) -> list:
        """ray.get with failures turned into one message naming role, rank and method."""
        import ray

        results = []
        for rank, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as exc:
                raise RoleFailure(f"{self.role} rank {rank} died during {method}: {_first_line(exc)}") from exc
            except ray.exceptions.RayTaskError as exc:
                raise RoleFailure(f"{self.role} rank {rank} failed in {method}: {_first_line(exc)}") from exc
        return results

    def submit(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list:
        """Start `method` on every rank (same args, or per_rank[i] for rank i); returns refs."""
        if per_rank is not None:
            return [getattr(actor, method).remote(*per_rank[i]) for i, actor in enumerate(self.actors)]
        return [getattr(actor, method).remote(*args) for actor in self.actors]

    def call(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list:
        return self.get(self.submit(method, *args, per_rank=per_rank), method)

    def call_rank0(self, method: str, *args: Any) -> Any:
        return self.get([getattr(self.actors[0], method).remote(*args)], method)[0]

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)[:500]
