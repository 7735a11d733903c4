"""Write a verifiable prompt set as JSONL (a prompt and the reference answer a reward function checks), in the
format PPO reads (`ppo.prompt_files`), made by code so that anyone can regenerate it.

    python -m jobs.make_task animals --out data/animals.jsonl [--repeats 8] [--seed 0]

animals: "Tell me a story about a {animal}." with the animal in an `animal` column; a story that names it earns
1 from configs/rewards/names_the_animal.py. The tiny TinyStories policy knows these animals, and names the asked-for
one in only some of its stories before training: something it can learn within a few GRPO steps.

follow-up: "Tell me a story about a {animal}." with a `word` column: the follow_up environment asks about that word
after the first answer and pays 1 when the second answer uses it (ppo.environment.name=follow_up).

rag-kb, rag-questions: jobs.compare_rag's knowledge base (a document per subject of configs/curate-tiny-facts.jsonl)
and its questions (one per fact, the value as reference answer); --repeats and --seed do not apply.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from common.durable import write_atomically
from jobs import cli

ANIMALS = ("dog", "cat", "bird", "fish", "bear", "bunny", "frog", "duck", "cow", "horse", "lion", "mouse", "pig",
           "sheep", "fox", "owl")
TEMPLATES = ("Tell me a story about a {animal}.", "Write a short story about a {animal}.",
             "Can you tell a story about a little {animal}?", "Tell a bedtime story about a {animal}.")


def animal_rows(repeats: int, seed: int) -> list[dict]:
    """Every animal in every template, `repeats` times, shuffled with `seed`."""
    rows = [{"prompt": template.format(animal=animal), "animal": animal}
            for _ in range(repeats) for template in TEMPLATES for animal in ANIMALS]
    random.Random(seed).shuffle(rows)
    return rows


def rag_kb_rows(repeats: int, seed: int) -> list[dict]:
    """jobs.compare_rag's knowledge base: one document per subject of the curation fact file."""
    from jobs.rag.kb import fact_documents, read_facts

    return fact_documents(read_facts())


def rag_question_rows(repeats: int, seed: int) -> list[dict]:
    """jobs.compare_rag's questions: one per fact, with the reference answer and the document that holds it."""
    from jobs.rag.kb import fact_questions, read_facts

    return fact_questions(read_facts())


WORDS = ("ball", "tree", "cake", "park", "box", "flower", "car", "toy", "hat", "boat", "sun", "book")


def follow_up_rows(repeats: int, seed: int) -> list[dict]:
    """The follow_up environment's prompts: a story about an animal, and the `word` the environment then asks
    about (actors/environments.py); every animal with every word in turn, `repeats` times, shuffled."""
    rows = [{"prompt": TEMPLATES[0].format(animal=animal), "word": WORDS[(i + r) % len(WORDS)]}
            for r in range(repeats) for i, animal in enumerate(ANIMALS)]
    random.Random(seed).shuffle(rows)
    return rows


TASKS = {"animals": animal_rows, "follow-up": follow_up_rows, "rag-kb": rag_kb_rows, "rag-questions": rag_question_rows}


def write_jsonl(rows: list[dict], out: Path) -> Path:
    """Written whole or not at all (common/durable.py): a reader, or a resume, never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m jobs.make_task", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=sorted(TASKS), help="which prompt set to write")
    parser.add_argument("--out", required=True, type=Path, help="the JSONL file to write")
    parser.add_argument("--repeats", type=int, default=8, help="how many times each prompt appears (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order (default 0)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    path = write_jsonl(TASKS[args.task](args.repeats, args.seed), args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.make_task", main))
