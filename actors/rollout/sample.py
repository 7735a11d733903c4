"""What every rollout engine returns, and the seed scheme they all sample with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    # Log-prob of each sampled token under the distribution that sampled it (repetition penalty, temperature, top_p
    # applied: vLLM's processed log-probs): PPO's behaviour policy.
    response_logprobs: list[float]  # one per model token (response_mask 1)
    finish_reason: str  # "stop" (EOS) or "length"
    # Multi-turn episodes (actors/episodes.py): 1 where a response token is the model's own, 0 where the
    # environment wrote it (an observation); None: every response token is the model's.
    response_mask: list[int] | None = None


# Seed streams besides the training one (generate's calls counter, restored on resume): dynamic sampling's extra
# rounds and sampled evaluation draw from streams of their own, a pure function of the step, so they neither move
# the training stream nor depend on how often they ran before a resume.
EXTRA_ROUND_STREAM = 1_000_000  # + round × this + step: round r ≥ 1 of a step (steps stay below a million)
EVAL_STREAM = 100_000_000  # + step: held-out answers sampled at the rollout temperature
TURN_STREAM = 200_000_000  # + round × 10,000,000 + turn × 1,000,000 + step: a multi-turn episode's turn (all but
# the first turn of the first round, which is the training stream's); rounds and turns below 10


def extra_round_draw(step: int, round_index: int) -> int:
    return EXTRA_ROUND_STREAM * round_index + step


def eval_draw(step: int) -> int:
    return EVAL_STREAM + step


def turn_draw(step: int, turn: int, round_index: int = 0) -> int:
    return TURN_STREAM + 10_000_000 * round_index + 1_000_000 * turn + step


SEED_INDEX_SPAN = 10_007  # indices below this keep the linear scheme's seeds (the runs measured so far)


def sample_seed(seed: int, calls: int, index: int) -> int:
    """Seed of the index-th prompt in the calls-th generate call: every engine draws from the same scheme, so a
    resumed run (calls restored by set_calls) reproduces its samples. Indices from SEED_INDEX_SPAN up (batches of
    10,007+ sequences, synthesis's 100k candidates) hash (seed, calls, index) into 63 bits: linearly, index
    10,007 of one call had the seed of index 0 of the next, and two samples shared one random stream."""
    if index < SEED_INDEX_SPAN:
        return seed * 1_000_003 + calls * SEED_INDEX_SPAN + index
    digest = hashlib.blake2b(f"{seed}:{calls}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1 | 1 << 61  # above every linear seed of a run (seed < 2^40)
