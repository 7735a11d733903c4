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


def sample_seed(seed: int, calls: int, index: int) -> int:
    """Seed of the index-th prompt in the calls-th generate call: every engine draws from the same scheme, so a
    resumed run (calls restored by set_calls) reproduces its samples."""
    return seed * 1_000_003 + calls * 10_007 + index
