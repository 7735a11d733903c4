"""The weight sync's collective path (ppo.weight_sync): policy rank 0 broadcasts the packed weights straight into
every rollout engine over a process group of their own — NCCL between GPUs, gloo between CPUs — instead of
putting them in Ray's object store for each engine to read. The object store stays the named fallback
(actors/ppo_weight_sync.py).

The group is built on a TCPStore of its own, not through torch.distributed's default group: DeepSpeed owns that
in the policy's process and vLLM in the engine's (vLLM's own `stateless_init_torch_distributed_process_group`
does the same). Rank 0 is the policy's rank 0; ranks 1..n are the engines.

One sync is, per bucket (actors/weights.py packs them): a header (the entries' bytes, the payload's bytes), the
entries as JSON, then the payload; a header of zeros ends it. JSON, not pickle: bytes from a peer never run code
here. An engine keeps its receive buffers from sync to sync, since fresh memory pays a page fault per 4 KiB.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Iterable

import torch

from actors.weights import PackedBucket

BACKENDS = ("gloo", "nccl")


def open_store(timeout_s: float):
    """(store, address, port): the group's rendezvous, served by the calling process (policy rank 0) on a port
    the system picks, so two runs on one node never collide."""
    import ray
    import torch.distributed as dist

    address = ray.util.get_node_ip_address()
    store = dist.TCPStore(address, 0, None, True, timedelta(seconds=timeout_s), wait_for_workers=False)
    return store, address, store.port


class WeightGroup:
    """One member of the weight-sync group: `broadcast` from rank 0, `send` (rank 0) and `receive` (the engines)."""

    def __init__(self, store, rank: int, world: int, backend: str, timeout_s: float, generation: int,
                 address: str | None = None):
        """address: this member's own address (its Ray node's), where a gloo group listens for its peers."""
        import torch.distributed as dist

        if backend not in BACKENDS:
            raise ValueError(f"weight-sync backend must be one of {BACKENDS}, got {backend!r}")
        self.rank, self.world, self.backend = rank, world, backend
        self.device = torch.device("cuda" if backend == "nccl" else "cpu")
        # A re-formed group (after an engine was replaced) keeps its keys apart from the last one's.
        prefixed = dist.PrefixStore(f"rayalign-weight-sync/{generation}", store)
        timeout = timedelta(seconds=timeout_s)
        if backend == "gloo" and (address is None or os.environ.get("GLOO_SOCKET_IFNAME")):
            self.group = dist.ProcessGroupGloo(prefixed, rank, world, timeout)  # torch reads GLOO_SOCKET_IFNAME here
        elif backend == "gloo":
            # Left to itself, gloo listens on whatever the machine's hostname resolves to, which on many hosts
            # (this one included) is a loopback address other nodes cannot reach.
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]
            self.group = dist.ProcessGroupGloo(prefixed, rank, world, options)
        else:
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world, options)
            # As vLLM's stateless NCCL groups do (vllm/platforms/cuda.py) for every torch version they support:
            # init_process_group would set the group's collective sequence number, and nothing else does here.
            self.group._set_sequence_number_for_group()
        self._received: list[torch.Tensor] = []  # an engine's receive buffers, one per bucket, kept warm

    @classmethod
    def join(cls, address: str, port: int, rank: int, world: int, backend: str, timeout_s: float,
             generation: int) -> "WeightGroup":
        """An engine's side: connect to rank 0's store, then form the group with the others."""
        import torch.distributed as dist

        import ray

        store = dist.TCPStore(address, port, None, False, timedelta(seconds=timeout_s))
        return cls(store, rank, world, backend, timeout_s, generation, ray.util.get_node_ip_address())

    def broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([tensor], options).wait()

    def _header(self, entries_bytes: int = 0, payload_bytes: int = 0) -> torch.Tensor:
        header = torch.tensor([entries_bytes, payload_bytes], dtype=torch.int64, device=self.device)
        self.broadcast(header)
        return header

    def close(self) -> None:
        """Break the group after a failed operation. Dropping the backend closes its connections, so peers blocked
        in one of its broadcasts fail at once instead of waiting out the timeout (gloo's abort and shutdown leave
        the connections open: measured); an NCCL communicator is aborted first. Their actors are then free for
        the object-store fallback, and the next sync forms a new group."""
        group, self.group = self.group, None
        if group is not None and self.backend == "nccl":
            group.abort()

    def send(self, buckets: Iterable[PackedBucket]) -> int:
        """Rank 0: broadcast every bucket (each one staged buffer on this group's device, BucketPacker with
        `device`); returns the payload bytes sent. A failure breaks the group (`close`) and is raised."""
        try:
            return self._send(buckets)
        except Exception:
            self.close()
            raise

    def _send(self, buckets: Iterable[PackedBucket]) -> int:
        sent = 0
        for bucket in buckets:
            (payload,) = bucket.buffers
            entries = json.dumps(bucket.entries).encode()
            self._header(len(entries), payload.numel())
            self.broadcast(torch.frombuffer(bytearray(entries), dtype=torch.uint8).to(self.device))
            self.broadcast(payload)
            sent += payload.numel()
        self._header()
        return sent

    def receive(self) -> list[PackedBucket]:
        """An engine: every bucket of one sync, as PackedBuckets whose views lie in this member's receive
        buffers (valid until the next receive). A failure breaks the group and is raised."""
        try:
            return self._receive()
        except Exception:
            self.close()
            raise

    def _receive(self) -> list[PackedBucket]:
        buckets = []
        while True:
            entries_bytes, payload_bytes = self._header().tolist()
            if payload_bytes == 0 and entries_bytes == 0:
                return buckets
            raw = torch.empty(entries_bytes, dtype=torch.uint8, device=self.device)
            self.broadcast(raw)
            entries = json.loads(raw.cpu().numpy().tobytes())
            payload = self._buffer(len(buckets), payload_bytes)
            self.broadcast(payload)
            buckets.append(PackedBucket((payload,), tuple((name, index, offset, dtype, tuple(shape))
                                                          for name, index, offset, dtype, shape in entries)))

    def _buffer(self, index: int, nbytes: int) -> torch.Tensor:
        if index == len(self._received):
            self._received.append(torch.empty(0, dtype=torch.uint8, device=self.device))
        if self._received[index].numel() < nbytes:
            self._received[index] = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        return self._received[index][:nbytes]


class WeightReceiver:
    """Mixin for the rollout engines (vLLM and Hugging Face): join the weight-sync group and load what its
    rank 0 broadcasts, through the engine's own `load_weights`."""

    weight_group: WeightGroup | None = None

    def join_weight_group(self, address: str, port: int, rank: int, world: int, backend: str, timeout_s: float,
                          generation: int) -> int:
        self.weight_group = None  # the last group's sockets close before the new one forms
        self.weight_group = WeightGroup.join(address, port, rank, world, backend, timeout_s, generation)
        return rank

    def load_policy_buckets(self, *rank_lists: list) -> int:
        """The object-store sync in one call (actors/ppo_weight_sync.py): each argument is a policy rank's list of
        bucket refs, which Ray hands over once the policy's weight_buckets returns it. The driver submits this
        call together with the policy's, so the engine takes it while the policy packs: an engine that sat idle
        answers its next call late on some machines (bench/ppo_step.py, timed_syncs), and that wait now overlaps
        the packing instead of following it."""
        import ray

        return self.load_weights(*ray.get([ref for refs in rank_lists for ref in refs]))

    def receive_weights(self) -> int:
        """Take one sync's broadcast and load it; returns the names loaded (as load_weights does)."""
        if self.weight_group is None:
            raise RuntimeError("receive_weights before join_weight_group: this engine is in no weight-sync group")
        return self.load_weights(*self.weight_group.receive())
