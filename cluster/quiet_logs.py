"""Library log lines that are false where rayalign runs them, or repeat on every PPO step, dropped at their
source by exact logger and message, so that the warnings left in a run's output are ones to read.

Each rule names why the line says nothing: a filter never hides a message it was not written for (other
layers failing to load weights, other Ray Train warnings stay).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    logger: str
    message: str  # the record's unformatted message (record.msg), matched exactly
    args: tuple | None = None  # when set, the record's args must equal these too
    why: str = ""

    def matches(self, record: logging.LogRecord) -> bool:
        if record.msg != self.message:
            return False
        return self.args is None or tuple(record.args or ()) == self.args


# Ray Train's PlacementGroupCleaner asks the State API every few seconds whether the controller is alive.
# The embedded cluster runs without the dashboard, which serves that API, so every query fails and the
# warning ("temporarily unavailable") repeats all run long. The cleaner only matters when a controller dies
# on a long-lived cluster; an embedded cluster ends with its driver, placement groups and all.
PLACEMENT_GROUP_CLEANER = Rule(
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    "Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
    "Continuing to monitor.",
    why="no dashboard, so no State API, in the embedded cluster")

# After every in-memory weight push, vLLM's layerwise reload reports the rotary embedding as "failed to
# load": its cos/sin table is computed from the config, not a checkpoint weight, so no push carries it and
# vLLM puts its own table back. The two INFO lines repeat once per PPO step; the PPO metrics time the sync.
VLLM_WEIGHT_PUSH = (
    Rule("vllm.model_executor.model_loader.reload.layerwise", "%s: Failed to load weights", ("RotaryEmbedding",),
         why="rotary tables are computed, not pushed; vLLM restores its own"),
    Rule("vllm.model_executor.model_loader.reload.inplace", "Reloading and processing weights took %.2f seconds",
         why="once per PPO step; the sync phase is timed in the metrics"),
    Rule("vllm.v1.core.block_pool", "Successfully reset prefix cache", why="once per PPO step"),
)


class DropMatching(logging.Filter):
    def __init__(self, rules: list[Rule]):
        super().__init__()
        self.rules = list(rules)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(rule.matches(record) for rule in self.rules)


def install(rules) -> None:
    """Attach one filter per logger (idempotent: a logger keeps a single rayalign filter)."""
    by_logger: dict[str, list[Rule]] = {}
    for rule in rules:
        by_logger.setdefault(rule.logger, []).append(rule)
    for name, logger_rules in by_logger.items():
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, DropMatching)]:
            logger.removeFilter(existing)
        logger.addFilter(DropMatching(logger_rules))


def quiet_vllm_weight_push() -> None:
    """Called by the vLLM rollout actor before it builds its engine."""
    install(VLLM_WEIGHT_PUSH)


def quiet_embedded_cluster_workers() -> None:
    """Ray's worker_process_setup_hook for the embedded cluster (runs in every worker process of the job)."""
    install([PLACEMENT_GROUP_CLEANER])
