"""What a candidate is made of, with no model in sight: its seed, the seed tasks its prompt shows, the two prompts
(write a task; answer it), the garbage check, and the record it becomes.

Every candidate is a pure function of (synth seed, its seed index): the examples shown, and the sampling seed of
each try (actors/rollout/sample.sample_seed over the stage's draw stream). So a re-run regenerates exactly what a
lost batch held, and `synth.repeat_seeds` candidates, which reuse earlier seed indices, repeat earlier ones.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from actors.rollout.sample import sample_seed
from common.config import SynthConfig
from common.errors import RecordError
from common.records import read_records

# Draw streams (sample_seed's `calls` argument) of the two stages; a stage's retry r draws from stream + r.
TASK_DRAW = 0
ANSWER_DRAW = 1_000
EXAMPLES_DRAW = 2_000


@dataclass(frozen=True)
class SeedTask:
    id: str  # the seed file's own id when it has one, else file:line
    text: str


@dataclass(frozen=True)
class Candidate:
    index: int  # position in the output (0 .. count + repeat_seeds - 1)
    seed_index: int  # whose seeds it samples with: itself, or an earlier candidate for a repeat


def load_seed_tasks(path) -> list[SeedTask]:
    """The first user turn of every seed record (strict: a malformed seed file fails here, naming file:line)."""
    tasks = []
    for record in read_records(path):
        users = [m["content"] for m in record["messages"] if m["role"] == "user" and m["content"].strip()]
        if users:
            tasks.append(SeedTask(str(record.get("columns", {}).get("id") or record["source"]), users[0]))
    if not tasks:
        raise RecordError(f"{path}: synth.seed_tasks holds no record with a non-empty user turn to use as a seed task")
    return tasks


def candidates(cfg: SynthConfig) -> list[Candidate]:
    """count fresh candidates, then repeat_seeds that reuse the first ones' seed indices."""
    fresh = [Candidate(i, i) for i in range(cfg.count)]
    return fresh + [Candidate(cfg.count + i, i) for i in range(cfg.repeat_seeds)]


def examples_for(tasks: list[SeedTask], k: int, seed: int, seed_index: int) -> list[SeedTask]:
    rng = random.Random(sample_seed(seed, EXAMPLES_DRAW, seed_index))
    return rng.sample(tasks, min(k, len(tasks)))


def task_messages(template: str, examples: list[SeedTask], max_chars: int = 300) -> list[dict]:
    """The task-writing prompt: each example on one numbered line, cut to max_chars."""
    def shown(text: str) -> str:
        line = " ".join(text.split())
        return line if len(line) <= max_chars else line[:max_chars].rstrip() + "…"

    listed = "\n".join(f"{n}. {shown(task.text)}" for n, task in enumerate(examples, start=1))
    return [{"role": "user", "content": template.format(examples=listed)}]


def answer_messages(task: str) -> list[dict]:
    return [{"role": "user", "content": task}]


def usable(text: str | None, min_chars: int) -> bool:
    """A generation worth keeping as a task or an answer: at least min_chars once trimmed. What else makes a
    record bad (repetition, harm, length) is the quality gates' call, downstream."""
    return text is not None and len(text.strip()) >= min_chars


def template_id(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


def to_record(row: dict, generator: str, cfg: SynthConfig, seed: int) -> dict:
    """A generated candidate as an SFT record (jobs.records schema) that says where it came from."""
    return {"messages": [{"role": "user", "content": row["task"].strip()},
                         {"role": "assistant", "content": row["answer"].strip()}],
            "provenance": {"generator": generator, "template": template_id(cfg.template), "seed": seed,
                           "seed_index": row["seed_index"], "candidate": row["index"],
                           "seed_tasks": json.loads(row["seed_tasks"]), "tries": {"task": row["task_tries"],
                                                                      "answer": row["answer_tries"]}}}
