"""Spawn N ranks of one role as Ray actors on a placement group and talk to them as one.

Training roles (policy, value) form their own torch.distributed world (gloo on CPU, NCCL on GPU) so that
DeepSpeed ZeRO shards across their ranks; the rendezvous address comes from rank 0's node. Every rank can
say where it runs (`placement_info`), and a dead rank can be respawned in its own placement bundle.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import torch

from common.errors import RoleFailure
from common.imports import heavy_imports


class Located:
    """Mixin for every role class: which node and process the actor runs in (the run's roster, jobs.status)."""

    def placement_info(self) -> dict:
        import ray

        context = ray.get_runtime_context()
        return {"actor_id": context.get_actor_id(), "node_id": context.get_node_id(), "pid": os.getpid(),
                "gpus": [str(g) for g in context.get_accelerator_ids().get("GPU", [])],
                "cuda": torch.cuda.is_available()}


class DistributedRole(Located):
    """Mixin for a role class whose ranks share one process group."""

    def rendezvous_address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init_process_group(self, master_addr: str, master_port: int, rank: int, world_size: int) -> int:
        import ray

        with heavy_imports():  # the rank's first DeepSpeed import (common/imports.py)
            import deepspeed

        if not torch.cuda.is_available():
            # gloo listens where the machine's hostname resolves unless told otherwise, and on many hosts (this one
            # included) that is a loopback address ranks on other nodes cannot reach: the node's own interface.
            interface = interface_of(ray.util.get_node_ip_address())
            if interface is not None:
                os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False, rank=rank, world_size=world_size,
                                   init_method=f"tcp://{master_addr}:{master_port}")
        return rank


def interface_of(address: str) -> str | None:
    """The name of the local network interface that holds the IPv4 `address`; None when none does."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == address for a in addresses):
            return name
    return None


class RoleGroup:
    """N ranks of one role. With `name_prefix`, actors are named <prefix>/<role>/<rank>-<suffix> (visible in
    `ray list actors`, reachable with ray.get_actor); `max_restarts` lets Ray rebuild a rank from its start
    arguments and retry the interrupted call, for roles that hold no state beyond those arguments."""

    def __init__(self, role: str, cls: type, ranks: int, placement_group, bundle_indices: list[int],
                 cpus: float, gpus: float, init_args: tuple = (), distributed: bool = False,
                 name_prefix: str | None = None, max_restarts: int = 0, connect: bool = True):
        import ray

        self.role = role
        self.init_args, self.name_prefix = init_args, name_prefix
        self.placement_group, self.bundle_indices = placement_group, bundle_indices[:ranks]
        self._remote = ray.remote(cls)
        self._options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": max_restarts,
                         "max_task_retries": max_restarts}
        self.names: list[str | None] = [None] * ranks
        self.actors = [self._spawn(rank) for rank in range(ranks)]
        self.distributed = distributed and ranks > 1  # one rank needs no process group (its engine makes its own)
        if connect:
            self.connect()

    def connect(self) -> None:
        """Form the ranks' torch.distributed group (waits for the actors to be up). The constructor calls it
        unless told not to, so that several roles' actors can start loading before any of them is waited for."""
        if not self.distributed:
            return
        master_addr, master_port = self.call_rank0("rendezvous_address")
        self.get([actor.init_process_group.remote(master_addr, master_port, rank, len(self.actors))
                  for rank, actor in enumerate(self.actors)], "init_process_group")

    def __len__(self) -> int:
        return len(self.actors)

    def _spawn(self, rank: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.name_prefix:
            self.names[rank] = f"{self.name_prefix}/{self.role}/{rank}-{uuid.uuid4().hex[:6]}"
        strategy = PlacementGroupSchedulingStrategy(self.placement_group, self.bundle_indices[rank])
        return self._remote.options(name=self.names[rank], scheduling_strategy=strategy,
                                    **self._options).remote(*self.init_args)

    def respawn(self, rank: int):
        """A fresh actor for `rank` in the same bundle; the old one is killed first so that the bundle's
        resources come back even when it hangs instead of dying."""
        import ray

        ray.kill(self.actors[rank], no_restart=True)
        self.actors[rank] = self._spawn(rank)
        return self.actors[rank]

    def roster(self) -> list[dict]:
        """Where every rank runs: role, rank, actor name, actor id, node id and pid."""
        infos = self.call("placement_info")
        return [{"role": self.role, "rank": rank, "name": self.names[rank], **info} for rank, info in enumerate(infos)]

    def get(self, refs: list, method: str) -> list:
        """Every rank's result, with failures turned into one message naming role, rank and method.

        Results are taken in the order they finish, so the first failure ends the wait: a surviving rank stuck
        in a collective with a dead peer cannot hang the driver."""
        import ray

        results: dict[int, Any] = {}
        pending = list(refs)
        while pending:
            (ready,), pending = ray.wait(pending, num_returns=1)
            rank = refs.index(ready)
            results[rank] = self._result(ready, rank, method)
        return [results[rank] for rank in range(len(refs))]

    def check(self, refs: list, ended: list, method: str) -> None:
        """Raise the RoleFailure of the first failed call among `ended`, finished calls out of a call's `refs` (each
        named by its rank in `refs`); the others' results are left to `get`."""
        for ref in ended:
            self._result(ref, refs.index(ref), method)

    def _result(self, ref, rank: int, method: str) -> Any:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise RoleFailure(f"{self.role} rank {rank} died during {method}: {error_line(exc)}") from exc
        except ray.exceptions.RayTaskError as exc:
            raise RoleFailure(f"{self.role} rank {rank} failed in {method}: {error_line(exc)}") from exc

    def submit(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list:
        """Start `method` on every rank (same args, or per_rank[i] for rank i); returns refs."""
        if per_rank is not None:
            return [getattr(actor, method).remote(*per_rank[i]) for i, actor in enumerate(self.actors)]
        return [getattr(actor, method).remote(*args) for actor in self.actors]

    def call(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list:
        return self.settle(method, self.submit(method, *args, per_rank=per_rank),
                           per_rank if per_rank is not None else [args] * len(self))

    def settle(self, method: str, refs: list, rank_args: list[tuple]) -> list:
        """The results of a `submit` made earlier (rank_args: the arguments each rank was given)."""
        return self.get(refs, method)

    def call_rank0(self, method: str, *args: Any) -> Any:
        return self.get([getattr(self.actors[0], method).remote(*args)], method)[0]

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)


def error_line(exc: BaseException) -> str:
    """The line of a (possibly remote, traceback-carrying) error that says what went wrong: its last one."""
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)[:500]
