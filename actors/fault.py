"""What a PPO run survives, and how, by what a role keeps:

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

import contextlib
import functools
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from actors.group import RoleFailure, RoleGroup
from actors.roster import write_roster
from jobs.cli import Preempted, RunFailed

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
    bundle, brought back by `revive(rank)`, and only its share of the call is run again, so the other ranks'
    results (and their seed counters) stay as they are. At most `max_replacements` per group."""

    def __init__(self, *args, revive: Callable[[int], None], on_replaced: Callable[[int, str], None],
                 max_replacements: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.revive, self.on_replaced, self.max_replacements = revive, on_replaced, max_replacements
        self.replacements = 0

    def call(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list:
        refs = self.submit(method, *args, per_rank=per_rank)
        rank_args = per_rank if per_rank is not None else [args] * len(refs)
        return [self._settle(rank, ref, method, rank_args[rank]) for rank, ref in enumerate(refs)]

    def _settle(self, rank: int, ref, method: str, args: tuple) -> Any:
        while True:
            try:
                return self._result(ref, rank, method)
            except RoleFailure as failure:
                if not _actor_died(failure) or self.replacements >= self.max_replacements:
                    raise
                self._replace(rank, str(failure))
                ref = getattr(self.actors[rank], method).remote(*args)

    def _replace(self, rank: int, reason: str) -> None:
        self.replacements += 1
        log.warning("%s; replacing it (%d of at most %d replacements)", reason, self.replacements,
                    self.max_replacements)
        self.respawn(rank)
        self.revive(rank)
        self.on_replaced(rank, reason)


def _actor_died(failure: RoleFailure) -> bool:
    import ray

    return isinstance(failure.__cause__, ray.exceptions.RayActorError)


def engine_group(loop) -> Callable[..., ReplacingRoleGroup]:
    """RoleGroup factory for a PPO loop's vLLM engines: a replacement is re-synced from the loop's policy."""
    return functools.partial(ReplacingRoleGroup, revive=functools.partial(revive_engine, loop),
                             on_replaced=functools.partial(engine_replaced, loop),
                             max_replacements=loop.cfg.ppo.rollout.max_replacements)


def revive_engine(loop, rank: int) -> None:
    """Bring a fresh engine to where its predecessor was: the policy's current weights (what the last sync
    sent) and the seed counter of the completed steps (a rollout redone after a death samples as an
    unbroken run would)."""
    engine = loop.rollout.actors[rank]
    buckets = [ref for rank_refs in loop.policy.call("weight_buckets", loop.cfg.ppo.sync_bucket_mb)
               for ref in rank_refs]
    loop.rollout.get([engine.load_weights.remote(*buckets), engine.set_calls.remote(loop.step_index)], "revive")


def engine_replaced(loop, rank: int, reason: str) -> None:
    record_fault(loop.output_dir, "engine_replaced", role="rollout", rank=rank, step=loop.step_index + 1,
                 reason=reason)
    write_roster(loop)


# ---- the driver: restarts from the last checkpoint, SIGTERM ---------------------------------------------
def run_supervised(cfg, output_dir: Path):
    """Run PPO to its last step; returns (loop, final metrics, exported model folder or None).

    A role failure (a dead policy or value rank, an engine beyond its replacements) tears every role down and
    resumes from the last complete checkpoint, at most ppo.max_restarts times; one more is recorded as
    "gave_up" and raised as RunFailed. SIGTERM ends the run after the current step with a checkpoint and
    raises Preempted."""
    from actors.ppo_loop import PPOLoop

    restarts = 0
    with sigterm_event() as preempted:
        while True:
            loop = PPOLoop(cfg, output_dir)
            loop.preempted = preempted
            try:
                loop.start()
                write_roster(loop)
                final = loop.run()
                if preempted.is_set():
                    record_fault(output_dir, "preempted", step=loop.step_index, reason="SIGTERM")
                    raise Preempted(f"stopped by SIGTERM after step {loop.step_index} with a checkpoint; re-run "
                                    f"the same command to resume from it")
                return loop, final, loop.export() if cfg.ppo.export else None
            except RoleFailure as failure:
                checkpoint = max(loop.checkpoint_steps(), default=0)
                _close_metrics(loop)
                if restarts >= cfg.ppo.max_restarts or preempted.is_set():
                    record_fault(output_dir, "gave_up", step=loop.step_index + 1, reason=str(failure),
                                 last_checkpoint=checkpoint, restarts=restarts, max_restarts=cfg.ppo.max_restarts)
                    why = "no restart: SIGTERM had asked the run to stop" if preempted.is_set() else \
                        f"gave up after {restarts} restart(s) (ppo.max_restarts={cfg.ppo.max_restarts})"
                    raise RunFailed(f"{failure}; {why}; {_resume_hint(checkpoint)}") from failure
                restarts += 1
                record_fault(output_dir, "restart", step=loop.step_index + 1, reason=str(failure),
                             from_checkpoint=checkpoint, restart=restarts, max_restarts=cfg.ppo.max_restarts)
                log.warning("%s; restarting every role from the last checkpoint (restart %d of at most %d)",
                            failure, restarts, cfg.ppo.max_restarts)
            finally:
                loop.shutdown()


def _resume_hint(checkpoint: int) -> str:
    if checkpoint:
        return f"re-run the same command to resume from the step-{checkpoint} checkpoint"
    return "no checkpoint was written yet (ppo.save_every): a re-run starts from step 1"


def _close_metrics(loop) -> None:
    """The failed loop's metrics writer, flushed; a successor opens the same files again."""
    metrics = getattr(loop, "metrics", None)
    if metrics is not None:
        metrics.close()


@contextlib.contextmanager
def sigterm_event():
    """An event that SIGTERM sets instead of killing the driver mid-step (Ray's own handler exits at once).

    Signal handlers belong to the main thread; elsewhere (a test driving the loop from a thread) the event is
    only set by hand."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def on_sigterm(signum, frame):
        log.warning("SIGTERM: finishing the current step, then a checkpoint and stop")
        event.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)
