"""A seeded chaos killer for one PPO run (issue 17, part 4): N times, once the run has logged a chosen step and a
random fraction of a step later (so the blow lands in whatever phase is running), SIGKILL the process of a random
role: a rollout engine, the reference, the reward actor, a policy rank or a value rank.

The plan (which step, which role, how long after) is a pure function of the seed, so a failing seed can be run
again. Every kill is appended to the run's faults.jsonl as `chaos_kill` (role, rank, pid, step), and once a
further step is logged after it, as `chaos_recovered` with the seconds that took; the run's own recovery events
(engine_replaced, restart) sit beside them in the same file.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from actors.fault import read_faults, record_fault
from actors.roster import read_roster
from common.metrics import read_jsonl
from tests.helpers import wait_for

TARGETS = (("rollout", 0), ("reference", 0), ("reward", 0), ("policy", 0), ("policy", 1), ("value", 0),
           ("value", 1))


@dataclass(frozen=True)
class Blow:
    after_step: int  # strike once the metrics log holds this many steps
    delay_s: float  # ... and this long after that
    role: str
    rank: int


def plan(seed: int, kills: int, steps: int, step_seconds: float) -> list[Blow]:
    """kills blows after distinct steps in 1 .. steps-4: the last three steps are left to run, so the run cannot
    finish while the last blow waits out its delay."""
    rng = random.Random(seed)
    after = sorted(rng.sample(range(1, steps - 3), kills))
    return [Blow(step, round(rng.uniform(0.0, step_seconds), 2), *rng.choice(TARGETS)) for step in after]


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [row["step"] for row in read_jsonl(path) if row["step"] > 0] if path.is_file() else []


class ChaosKiller(threading.Thread):
    def __init__(self, out: Path, blows: list[Blow], timeout_s: float = 600):
        super().__init__(daemon=True)
        self.out, self.blows, self.timeout_s = out, blows, timeout_s
        self.kills: list[dict] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            for blow in self.blows:
                self.strike(blow)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.errors.append(exc)

    def strike(self, blow: Blow) -> None:
        wait_for(lambda: len(steps_logged(self.out)) >= blow.after_step, self.timeout_s, interval=0.1,
                 what=f"step {blow.after_step}")
        time.sleep(blow.delay_s)
        pid = self.live_pid(blow.role, blow.rank)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        steps = len(steps_logged(self.out))
        record_fault(self.out, "chaos_kill", role=blow.role, rank=blow.rank, pid=pid, steps_logged=steps,
                     delay_s=blow.delay_s)
        wait_for(lambda: len(steps_logged(self.out)) > steps, self.timeout_s, interval=0.2,
                 what=f"a step after killing {blow.role} rank {blow.rank}")
        seconds = time.time() - killed_at
        record_fault(self.out, "chaos_recovered", role=blow.role, rank=blow.rank, seconds=round(seconds, 2))
        self.kills.append({"blow": blow, "pid": pid, "steps_logged": steps, "recovered_s": seconds})

    def live_pid(self, role: str, rank: int) -> int:
        """The role's current process (roles.json is rewritten when roles restart; a pid from before a restart is
        gone, so wait for the new one)."""
        found: list[int] = []

        def alive() -> bool:
            entries = [a for a in read_roster(self.out)["actors"] if a["role"] == role and a["rank"] == rank]
            if not entries:
                return False
            try:
                os.kill(entries[0]["pid"], 0)
            except ProcessLookupError:
                return False
            found[:] = [entries[0]["pid"]]
            return True

        wait_for(alive, self.timeout_s, interval=0.1, what=f"a live {role} rank {rank}")
        return found[0]


def summary(out: Path) -> dict:
    """Kills survived, steps redone (logged steps a restart threw away), and seconds lost: the time from each kill
    to the next logged step (redone steps included), less the step the run would have spent anyway (the
    median step time of the final log)."""
    faults = read_faults(out)
    kills = [f for f in faults if f["event"] == "chaos_kill"]
    recovered = [f for f in faults if f["event"] == "chaos_recovered"]
    redone = sum(max(0, f["step"] - 1 - f["from_checkpoint"]) for f in faults if f["event"] == "restart")
    step_s = statistics.median(row["time/step"] for row in read_jsonl(out / "metrics.jsonl") if row["step"] > 0)
    return {"kills": len(kills), "survived": len(recovered),
            "by_role": [f"{f['role']}:{f['rank']}" for f in kills],
            "recoveries": [f["event"] for f in faults if f["event"] in ("engine_replaced", "restart")],
            "steps_redone": redone,
            "seconds_lost": round(sum(f["seconds"] for f in recovered) - len(recovered) * step_s, 1)}
