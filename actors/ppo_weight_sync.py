"""Phase 7's transport (ppo.weight_sync): the policy's weights into every rollout engine, through Ray's object
store or broadcast over a group of their own (actors/weight_collective.py).

    object_store  policy rank 0 packs buckets into the store (actors/weights.py); each engine reads them, on one
                  node as views of shared memory. Also the named fallback of the collective path.
    collective    rank 0 broadcasts the buckets to every engine at once: NCCL between GPUs, gloo between CPUs.
                  The group forms once the roles are up. A sync that fails (an engine died) is redone through the
                  object store, which replaces the dead engine (actors/fault.py), and the group forms again,
                  with the new engine, at the next sync. A group that cannot form at all sends the whole run
                  through the object store.
    auto          collective where every role has whole GPUs (NCCL needs one GPU per member: colocated roles on
                  fractions of one GPU cannot join one group), or, on CPUs, where an engine runs on another node
                  than policy rank 0 (gloo); else the object store. Between two nodes (bench/sync_across_nodes.py)
                  the gloo broadcast is 2-2.8x faster than the object store (27.5M parameters into vLLM: 0.089 vs
                  0.188 s); on one node the object store is as fast or faster (bench/ppo_step.py: 0.111 s through
                  the store, 0.144 s over gloo, which sends the bytes through loopback TCP instead of sharing them).
"""

from __future__ import annotations

import contextlib
import logging

from common.config import PPOConfig
from common.errors import RoleFailure

log = logging.getLogger("rayalign.ppo")


def sync_transport(ppo: PPOConfig, spans_nodes: bool = False) -> tuple[str, str | None]:
    """(transport, collective backend): ("collective", "nccl" | "gloo") or ("object_store", None). spans_nodes:
    some engine runs on another node than policy rank 0."""
    whole_gpus = ppo.gpus_per_actor >= 1  # the config refuses collective on fractions of GPUs
    backend = "nccl" if whole_gpus else "gloo"
    if ppo.weight_sync == "collective" or (ppo.weight_sync == "auto" and whole_gpus):
        return "collective", backend
    if ppo.weight_sync == "auto" and ppo.gpus_per_actor == 0 and spans_nodes:
        return "collective", backend
    return "object_store", None


class WeightSync:
    """Moves the policy's current weights into every engine of `roles` (actors/ppo_roles.PPORoles)."""

    def __init__(self, roles, ppo: PPOConfig):
        self.roles, self.ppo = roles, ppo
        auto_on_cpus = ppo.weight_sync == "auto" and ppo.gpus_per_actor == 0
        self.transport, self.backend = sync_transport(ppo, auto_on_cpus and self._spans_nodes())
        self.generation = 0  # groups formed so far: each keys its rendezvous apart from the last one's
        self.formed = False
        self.fallbacks = 0  # syncs the collective path handed to the object store
        self.last_collective = False  # whether the last sync went over the group (the step's sync/collective)
        self.store_synced = False  # whether a sync went through the object store yet
        log.info("weight sync: %s", self.describe())

    def _spans_nodes(self) -> bool:
        """Whether some engine runs on another node than policy rank 0 (where the weights start)."""
        source = self.roles.policy.call_rank0("placement_info")["node_id"]
        return any(info["node_id"] != source for info in self.roles.rollout.call("placement_info"))

    def describe(self) -> str:
        if self.transport == "object_store":
            return "Ray's object store"
        return f"{self.backend} broadcast from policy rank 0 to {len(self.roles.rollout)} engine(s)"

    def prepare(self) -> None:
        """Form the group (collective only) while the roles are up and idle: at a later sync, an engine sampling
        the next batch (ppo.async_rollouts) would join only once its rollout is done."""
        if self.transport != "collective" or self.formed:
            return
        try:
            self.form_group()
        except RoleFailure as failure:
            # A group that cannot form (a firewall, NCCL refusing the GPUs) would fail the same way, after the
            # same wait, at every step: the run goes on through the object store.
            self.transport = "object_store"
            log.warning("the weight-sync group could not form (%s); every sync of this run goes through Ray's "
                        "object store (the fallback)", failure)

    def __call__(self) -> int:
        """Sync once; returns the tensors each engine loaded."""
        self.prepare()
        if self.transport == "collective":
            try:
                loaded = self._broadcast()
                self.last_collective = True
                return loaded
            except RoleFailure as failure:
                self.formed = False
                self.fallbacks += 1
                log.warning("collective weight sync failed (%s); this sync goes through Ray's object store (the "
                            "fallback), and the group forms again at the next sync", failure)
        self.last_collective = False
        return self._through_object_store()

    def regroup(self) -> None:
        """An engine was replaced: the next collective sync forms the group again, with the new engine."""
        self.formed = False

    def form_group(self) -> None:
        policy, engines = self.roles.policy, self.roles.rollout
        timeout = self.ppo.weight_sync_timeout_s
        self.generation += 1
        address, port = policy.call_rank0("weight_group_address", timeout)
        world = len(engines) + 1
        refs = [policy.actors[0].join_weight_group.remote(world, self.backend, timeout, self.generation)]
        refs += [engine.join_weight_group.remote(address, port, rank + 1, world, self.backend, timeout,
                                                 self.generation) for rank, engine in enumerate(engines.actors)]
        # Plain gets, not the engine group's replacing ones: a replacement could not join this group. The engines
        # first, whose failure (a dead actor) shows at once; rank 0 then waits for its peers up to the timeout.
        with self._reading_all(refs):
            engines.get(refs[1:], "join_weight_group")
            policy.get(refs[:1], "join_weight_group")
        self.formed = True
        log.info("weight-sync group %d formed: %s at %s:%d", self.generation, self.describe(), address, port)

    def _broadcast(self) -> int:
        policy, engines = self.roles.policy, self.roles.rollout
        sends = policy.submit("send_weights", self.ppo.sync_bucket_mb)
        loads = engines.submit("receive_weights")
        with self._reading_all(loads + sends):
            loaded = engines.get(loads, "receive_weights")
            policy.get(sends, "send_weights")
        return loaded[0]

    @contextlib.contextmanager
    def _reading_all(self, refs: list):
        """On a failure, wait for the other members' calls too before it is raised: a member of a broken group
        fails at once (WeightGroup.close), and an error never read would be logged again by Ray as unhandled.
        Their calls are also done before the fallback's calls queue behind them."""
        import ray

        try:
            yield
        except RoleFailure:
            for ref in refs:
                with contextlib.suppress(ray.exceptions.RayError):
                    ray.get(ref, timeout=self.ppo.weight_sync_timeout_s)
            raise

    def _through_object_store(self) -> int:
        policy, engines = self.roles.policy, self.roles.rollout
        # Both calls at once: each engine waits for the policy's bucket lists and reads them itself.
        packed = policy.submit("weight_buckets", self.ppo.sync_bucket_mb)
        loads = engines.submit("load_policy_buckets", *packed)
        with self._reading_all(loads):  # a policy failure fails the loads too: they are read before it is raised
            policy.get(packed, "weight_buckets")
        loaded = engines.settle("load_policy_buckets", loads, [tuple(packed)] * len(engines))[0]
        if not self.store_synced:  # once a run: how the engines took it (rollout.zero_copy_sync, packed_sync)
            self.store_synced = True
            viewed, parameters = self.roles.rollout.call_rank0("zero_copy")
            if parameters:
                log.info("weight sync: engine parameters viewing the synced weights in Ray's object store (zero "
                         "copy): %d of %d", viewed, parameters)
            layout = self.roles.rollout.call_rank0("weight_layout")
            if layout in ("packed", "packed-reload"):  # the first sync proved the rebuild, or the reload it stays
                log.info("weight sync: the engines' packed layers are %s (ppo.rollout.packed_sync)",
                         "rebuilt from the synced weights" if layout == "packed" else "reloaded by vLLM")
        return loaded


def policy_buckets(policy, bucket_mb: int) -> list:
    """Object refs of the policy's weights packed into Ray's object store (rank 0 puts them; the other ranks take
    part in ZeRO-3's gathers): what an engine's load_weights takes."""
    return [ref for rank_refs in policy.call("weight_buckets", bucket_mb) for ref in rank_refs]
