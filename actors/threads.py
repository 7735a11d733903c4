"""How many torch threads a role computes with. Ray starts an actor that reserves one CPU with
OMP_NUM_THREADS=1, so torch in it runs on one thread, while PPO's phases run in turn and the one computing could
use every core. Each role therefore sets its threads at the start of each computing call: a fixed count when the
config names one (ppo.role_threads), else the node's cores shared among the ranks that compute at the same time
in that call's phase (its `sharing`), so overlapping phases never oversubscribe the cores."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


def node_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadPlan:
    sharing: dict[str, int] = field(default_factory=dict)  # method → ranks busy at once when it runs (≥ 1)
    fixed: int | None = None

    def threads(self, method: str, cores: int | None = None) -> int:
        if self.fixed is not None:
            return self.fixed
        return max(1, (cores or node_cores()) // max(self.sharing.get(method, 1), 1))

    def use(self, method: str) -> int:
        """Set this process's torch threads for `method`; returns the count."""
        count = self.threads(method)
        if torch.get_num_threads() != count:
            # torch._C's own setter: vLLM's CPU worker replaces torch.set_num_threads with a no-op in its process,
            # for the threads it pins to cores when it runs workers of its own; a rollout engine runs vLLM in the
            # actor's process, unpinned (actors/rollout/vllm_engine.py).
            torch._C.set_num_threads(count)
        return count


def use_threads(plan: ThreadPlan | None, method: str) -> None:
    """plan.use(method); without a plan (an engine outside PPO's roles) the process keeps its threads."""
    if plan is not None:
        plan.use(method)
