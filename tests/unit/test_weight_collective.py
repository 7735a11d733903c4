"""The weight sync's collective path (actors/weight_collective.py) on real gloo groups, one member per thread:
what rank 0 broadcasts arrives exactly (names, dtypes, shapes, values, tied aliases) in every engine, sync after
sync in the same receive buffers, and a member that vanishes fails the sync for everyone instead of hanging it.
The transport's choice (actors/ppo_weight_sync.py) and its config check are here too."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from actors.group import interface_of
from actors.ppo_weight_sync import sync_transport
from actors.weight_collective import WeightGroup
from actors.weights import BucketPacker
from common.config import load_config
from common.errors import ConfigError
from tests.conftest import TINY_CPU
from tests.unit.test_weights import mixed_weights

TIMEOUT_S = 20


def run_members(world: int, member, generation: int = 1) -> list:
    """member(group) in `world` threads, each a rank of one gloo group; returns each rank's result or error."""
    server = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=TIMEOUT_S), wait_for_workers=False)
    results: list = [None] * world

    def body(rank: int) -> None:
        try:
            store = server if rank == 0 else dist.TCPStore("127.0.0.1", server.port, None, False,
                                                           timedelta(seconds=TIMEOUT_S))
            results[rank] = member(WeightGroup(store, rank, world, "gloo", TIMEOUT_S, generation, "127.0.0.1"))
        except Exception as error:  # noqa: BLE001 - the test reads each member's outcome
            results[rank] = error

    threads = [threading.Thread(target=body, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=3 * TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a member hung"
    return results


def test_every_engine_receives_exactly_what_rank_0_sends_sync_after_sync():
    weights = mixed_weights()
    second = [(name, tensor + 1 if tensor.is_floating_point() else tensor) for name, tensor in weights]
    packer = BucketPacker(256, torch.device("cpu"))  # small buckets: several per sync

    def member(group: WeightGroup):
        if group.rank == 0:
            return [group.send(packer.pack(iter(sync), {"embed.weight": ("lm_head.weight",)}))
                    for sync in (weights, second)]
        got = []
        for _ in range(2):
            buckets = group.receive()  # views valid until the next receive: cloned now
            got.append(([{name: tensor.clone() for name, tensor in bucket} for bucket in buckets],
                        [bucket.buffers[0].data_ptr() for bucket in buckets]))
        return got

    sender, *engines = run_members(3, member)
    assert isinstance(sender, list) and sender[0] == sender[1] > 0, sender
    for engine in engines:
        assert not isinstance(engine, Exception), engine
        for (buckets, _), sent in zip(engine, (weights, second)):
            received = {name: tensor for bucket in buckets for name, tensor in bucket.items()}
            assert list(received) == [name for name, _ in sent[:1]] + ["lm_head.weight"] + \
                [name for name, _ in sent[1:]]
            for name, tensor in sent:
                assert received[name].dtype == tensor.dtype and received[name].shape == tensor.shape, name
                assert torch.equal(received[name], tensor), name
            assert torch.equal(received["lm_head.weight"], received["embed.weight"])
        assert len(engine[0][0]) > 2
        assert engine[0][1] == engine[1][1]  # the second sync lands in the first one's buffers


def test_a_member_that_leaves_fails_the_sync_for_every_member_instead_of_hanging_it():
    weights = mixed_weights()
    packer = BucketPacker(256, torch.device("cpu"))
    gone = threading.Event()

    def member(group: WeightGroup):
        if group.rank == 2:
            group.close()  # its connections close, as a dead engine's do
            gone.set()
            return "left"
        gone.wait(TIMEOUT_S)
        return group.send(packer.pack(iter(weights))) if group.rank == 0 else group.receive()

    sender, engine, left = run_members(3, member)
    assert left == "left"
    assert isinstance(sender, RuntimeError) and isinstance(engine, RuntimeError), (sender, engine)


def test_a_gloo_member_listens_on_the_address_it_is_given(monkeypatch):
    """Not where the hostname resolves (a loopback address on many hosts, this one included): an address that is
    not this machine's cannot be listened on, so a member given one fails at once, naming it. GLOO_SOCKET_IFNAME,
    set by a user, still decides."""
    store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=TIMEOUT_S), wait_for_workers=False)
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    elsewhere = next(a for a in ("203.0.113.7", "198.51.100.7", "192.0.2.77") if interface_of(a) is None)
    with pytest.raises(RuntimeError, match=f"Cannot resolve {elsewhere} to a \\(local\\) address"):
        WeightGroup(store, 0, 1, "gloo", TIMEOUT_S, 1, elsewhere)
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", interface_of("127.0.0.1"))
    group = WeightGroup(store, 0, 1, "gloo", TIMEOUT_S, 2, elsewhere)  # the variable wins: the address is unused
    tensor = torch.arange(3.0)
    group.broadcast(tensor)  # a group of one: rank 0 broadcasts to itself
    assert tensor.tolist() == [0.0, 1.0, 2.0]


def test_the_interface_holding_an_address_is_found_and_a_foreign_address_has_none():
    assert interface_of("127.0.0.1") is not None  # the loopback interface: "lo" on Linux
    assert interface_of("203.0.113.7") is None or interface_of("198.51.100.7") is None


def test_auto_broadcasts_between_whole_gpus_and_between_cpu_nodes_only():
    def ppo(*overrides):
        return load_config(TINY_CPU, list(overrides)).ppo

    assert sync_transport(ppo()) == ("object_store", None)
    assert sync_transport(ppo(), spans_nodes=True) == ("collective", "gloo")
    assert sync_transport(ppo("ppo.gpus_per_actor=1")) == ("collective", "nccl")
    assert sync_transport(ppo("ppo.gpus_per_actor=0.5")) == ("object_store", None)
    assert sync_transport(ppo("ppo.gpus_per_actor=0.5"), spans_nodes=True) == ("object_store", None)
    assert sync_transport(ppo("ppo.weight_sync=object_store"), spans_nodes=True) == ("object_store", None)
    assert sync_transport(ppo("ppo.weight_sync=collective")) == ("collective", "gloo")
    assert sync_transport(ppo("ppo.weight_sync=object_store", "ppo.gpus_per_actor=1")) == ("object_store", None)
    with pytest.raises(ConfigError, match="weight_sync=collective broadcasts over NCCL.*gpus_per_actor=0.5"):
        ppo("ppo.weight_sync=collective", "ppo.gpus_per_actor=0.5")
