"""PPO's prompts: read from the prompt files (with each record's other fields, for reward functions), a seeded
held-out set for evaluation, and which prompts each step answers (the same at the same step on every resume)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from common.config import PPOConfig
from common.errors import EmptyDatasetError
from common.records import prompt_of, read_many


@dataclass(frozen=True)
class Prompt:
    turns: list[dict]  # the chat to answer, its last user turn rendered through ppo.prompt_template
    columns: dict = field(default_factory=dict)  # the record's other fields, for plug-in reward functions
    source: str = ""  # file:line, named when a reward function fails on it


def load_prompts(ppo: PPOConfig) -> list[Prompt]:
    """Prompts from ppo.prompt_files: records whose turns end with a user turn, that turn rendered through
    ppo.prompt_template."""
    prompts = []
    for record in read_many(ppo.prompt_files, ppo.max_prompts):
        turns = [dict(m) for m in prompt_of(record)]
        if not turns or turns[-1]["role"] != "user":
            continue
        turns[-1]["content"] = ppo.prompt_template.replace("{prompt}", turns[-1]["content"])
        prompts.append(Prompt(turns, record.get("columns", {}), record["source"]))
    if not prompts:
        raise EmptyDatasetError(f"no PPO prompts ending in a user turn in {ppo.prompt_files}")
    return prompts


def hold_out(pool_size: int, held: int, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) prompt indices: a seeded choice of `held` prompts that training never sees, the
    same on every resume of the run."""
    if held >= pool_size:
        raise EmptyDatasetError(f"ppo.eval_prompts={held} would hold out all {pool_size} PPO prompts; lower it "
                                f"or add prompts")
    order = list(range(pool_size))
    random.Random(seed * 4099 + 17).shuffle(order)
    return sorted(order[held:]), sorted(order[:held])


def prompts_for_step(pool_size: int, batch: int, step: int, seed: int) -> list[int]:
    """Indices of the step's prompts: steps read one endless sequence of seeded reshuffles of the pool, `batch` at
    a time, so every prompt is used once per pass and a resumed run sees the same prompts at the same step. (Passes
    of whole steps skipped the pool % batch prompts left at each pass's end, and a pool under twice the batch drew
    a fresh subset every step: one of 24 prompts 3 times in 10 steps, another 9.) Where the pool and batch divide,
    the picks are the passes-of-steps ones."""
    first = step * batch
    orders: dict[int, list[int]] = {}
    picked = []
    for position in range(first, first + batch):
        which = position // pool_size
        if which not in orders:
            orders[which] = list(range(pool_size))
            random.Random(seed * 7919 + which).shuffle(orders[which])
        picked.append(orders[which][position % pool_size])
    return picked


def prompts_for_extra_round(pool_size: int, batch: int, step: int, round_index: int, seed: int) -> list[int]:
    """Indices of the prompts dynamic sampling adds in round `round_index` (1, 2, ...) of `step`: a seeded draw
    without repeats (repeating only once the pool is used up), the same on every resume."""
    order = list(range(pool_size))
    random.Random((seed * 7919 + step) * 104_729 + round_index).shuffle(order)
    return [order[i % pool_size] for i in range(batch)]
