"""What every rollout engine returns, and the seed scheme they all sample with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    # Log-prob of each sampled token under the distribution that sampled it (repetition penalty, temperature, top_p
    # applied: vLLM's processed log-probs): PPO's behaviour policy.
    response_logprobs: list[float]
    finish_reason: str  # "stop" (EOS) or "length"


# Seed streams besides the training one (generate's calls counter, restored on resume): dynamic sampling's extra
# rounds and sampled evaluation draw from streams of their own, a pure function of the step, so they neither move
# the training stream nor depend on how often they ran before a resume.
EXTRA_ROUND_STREAM = 1_000_000  # + round × this + step: round r ≥ 1 of a step (steps stay below a million)
EVAL_STREAM = 100_000_000  # + step: held-out answers sampled at the rollout temperature


def extra_round_draw(step: int, round_index: int) -> int:
    return EXTRA_ROUND_STREAM * round_index + step


def eval_draw(step: int) -> int:
    return EVAL_STREAM + step


def sample_seed(seed: int, calls: int, index: int) -> int:
    """Seed of the index-th prompt in the calls-th generate call: every engine draws from the same scheme, so a
    resumed run (calls restored by set_calls) reproduces its samples."""
    return seed * 1_000_003 + calls * 10_007 + index
