"""The PPO driver's own survival: a role failure restarts every role from the last checkpoint (ppo.max_restarts
times), SIGTERM ends the run after the current step with a checkpoint. What each role survives is described in
actors/fault.py."""

from __future__ import annotations

import logging
from pathlib import Path

from actors.fault import record_fault
from actors.ppo_loop import AnswersSink, PPOLoop
from common.config import Config
from common.errors import Preempted, RoleFailure, RunFailed
from common.signals import sigterm_event

log = logging.getLogger("rayalign.fault")


def run_supervised(cfg: Config, output_dir: Path, on_answers: AnswersSink | None = None):
    """Run PPO to its last step; returns (loop, final metrics, exported model folder or None).

    A role failure (a dead policy or value rank, an engine beyond its replacements) tears every role down and
    resumes from the last complete checkpoint, at most ppo.max_restarts times; one more is recorded as
    "gave_up" and raised as RunFailed. SIGTERM ends the run after the current step with a checkpoint and
    raises Preempted. `on_answers` receives the run report's greedy answers before and after training."""
    restarts = 0
    with sigterm_event() as preempted:
        while True:
            loop = PPOLoop(cfg, output_dir, on_answers)
            loop.preempted = preempted
            try:
                loop.start()
                loop.write_roster()
                final = loop.run()
                if preempted.is_set() and loop.step_index < cfg.ppo.steps:  # after the last step: a finished run
                    record_fault(output_dir, "preempted", step=loop.step_index, reason="SIGTERM")
                    raise Preempted(f"stopped by SIGTERM after step {loop.step_index} with a checkpoint; re-run "
                                    f"the same command to resume from it")
                return loop, final, loop.export() if cfg.ppo.export else None
            except RoleFailure as failure:
                checkpoint = max(loop.checkpoint_steps(), default=0)
                loop.close_metrics()
                if preempted.is_set():
                    # An eviction's SIGTERM reaches the role processes too, so a role dying now is the stop
                    # itself: the run is preempted (exit 143, resumable), not failed.
                    record_fault(output_dir, "preempted", step=loop.step_index, reason=f"SIGTERM ({failure})",
                                 last_checkpoint=checkpoint)
                    raise Preempted(f"stopped by SIGTERM after step {loop.step_index}; "
                                    f"{_resume_hint(checkpoint)}") from failure
                if restarts >= cfg.ppo.max_restarts:
                    record_fault(output_dir, "gave_up", step=loop.step_index + 1, reason=str(failure),
                                 last_checkpoint=checkpoint, restarts=restarts, max_restarts=cfg.ppo.max_restarts)
                    why = f"gave up after {restarts} restart(s) (ppo.max_restarts={cfg.ppo.max_restarts})"
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
