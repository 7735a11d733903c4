"""What a PPO run survives, and how, by what a role keeps (the driver's side is actors/ppo_supervisor.py):

    vLLM engine       weights from the policy, a sampling-seed counter: a dead engine is replaced in its own
                      placement bundle, re-synced from the policy, and only its share of the call runs again
    reference, reward frozen weights from their start arguments: Ray restarts the actor and retries the call
                      (ppo.stateless_max_restarts, set where the roles are spawned)
    policy, value     optimizer state inside one torch.distributed group: a dead rank fails the step, every
                      role is torn down and the run resumes from its last complete checkpoint
                      (at most ppo.max_restarts times per job)
    the driver        SIGTERM (ray job stop, a Kubernetes eviction, kill) lets the current step finish, writes a
                      checkpoint and stops; re-running the same command resumes from exactly that step

Every replacement, restart and SIGTERM stop is appended to <output>/faults.jsonl for the operator (jobs.status).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from actors.group import RoleGroup
from common.errors import RoleFailure

log = logging.getLogger("rayalign.fault")
FAULTS_FILE = "faults.jsonl"


def record_fault(output_dir: str | Path, event: str, **details: Any) -> None:
    with (Path(output_dir) / FAULTS_FILE).open("a") as handle:
        handle.write(json.dumps({"time": time.time(), "event": event, **details}) + "\n")


def read_faults(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / FAULTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


# ---- rollout engines: replace and re-sync ------------------------------------------------------------------
class ReplacingRoleGroup(RoleGroup):
    """Ranks holding nothing the driver cannot restore. A rank that dies during `call` is respawned in its
    bundle, brought back by `revive(actor)` (which returns the refs of the calls that restore it), and only its
    share of the call (or of a `submit` being settled) is run again, so the other ranks' results (and their seed counters) stay as they are. At
    most `max_replacements` per group."""

    def __init__(self, *args, revive: Callable[[Any], list], on_replaced: Callable[[int, str], None],
                 max_replacements: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.revive, self.on_replaced, self.max_replacements = revive, on_replaced, max_replacements
        self.replacements = 0

    def settle(self, method: str, refs: list, rank_args: list[tuple]) -> list:
        return [self._settle(rank, ref, method, rank_args[rank]) for rank, ref in enumerate(refs)]

    def _settle(self, rank: int, ref, method: str, args: tuple) -> Any:
        while True:
            try:
                return self._result(ref, rank, method)
            except RoleFailure as failure:
                if not _actor_died(failure):
                    raise
                # A ref sent before this rank was replaced (async rollouts' prefetched batch) fails with the old
                # actor's death: sent again to the replacement, which is not replaced a second time.
                if not _died_elsewhere(failure, self.actors[rank]):
                    if self.replacements >= self.max_replacements:
                        raise
                    self._replace(rank, str(failure))
                ref = getattr(self.actors[rank], method).remote(*args)

    def _replace(self, rank: int, reason: str) -> None:
        self.replacements += 1
        log.warning("%s; replacing it (%d of at most %d replacements)", reason, self.replacements,
                    self.max_replacements)
        for ref in self.revive(self.respawn(rank)):  # the new actor's own calls (it runs them in order)
            self._result(ref, rank, "revive")  # named by the rank replaced, not by the call's place in the list
        self.on_replaced(rank, reason)


def _actor_died(failure: RoleFailure) -> bool:
    import ray

    return isinstance(failure.__cause__, ray.exceptions.RayActorError)


def _died_elsewhere(failure: RoleFailure, current) -> bool:
    """Whether the actor whose death `failure` reports is not `current` (the rank's actor now)."""
    dead = getattr(failure.__cause__, "actor_id", None)
    return dead is not None and dead != current._actor_id.hex()


def engine_group(revive: Callable[[Any], list], on_replaced: Callable[[int, str], None],
                 max_replacements: int) -> Callable[..., ReplacingRoleGroup]:
    """RoleGroup factory for the vLLM engines: a replacement is brought back by `revive(actor)` (the driver
    re-syncs the policy's weights into it) and reported by `on_replaced(rank, reason)`."""
    return functools.partial(ReplacingRoleGroup, revive=revive, on_replaced=on_replaced,
                             max_replacements=max_replacements)
