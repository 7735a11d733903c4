"""What one PPO step's responses look like, for the health monitors (actors/algo/monitors.py) and the reward
sources: distinct-n, pairwise similarity of answers to the same prompt, filler/jargon density, length.

Pure Python (stdlib + actors.algo.text); texts are tokenised so that English words and Chinese characters count
alike.
"""

from __future__ import annotations

import statistics
from itertools import combinations
from typing import Iterable, Mapping, Sequence

from actors.algo.text import distinct_n, ngrams, text_tokens

DISTINCT_1 = "distinct_1"
DISTINCT_2 = "distinct_2"
PAIRWISE_SIMILARITY = "pairwise_similarity"
FILLER_DENSITY = "filler_density"
MEAN_CHARS = "mean_chars"


def gram_set(text: str) -> set[tuple[str, ...]]:
    """The set of unigrams and bigrams of `text` (unigrams keep one-word responses comparable)."""
    tokens = text_tokens(text)
    return set(ngrams(tokens, 1)) | set(ngrams(tokens, 2))


def jaccard_similarity(a: str, b: str) -> float:
    """|A ∩ B| / |A ∪ B| of the 1-2-gram sets; two texts with no tokens count as identical (1.0)."""
    grams_a, grams_b = gram_set(a), gram_set(b)
    union = grams_a | grams_b
    return len(grams_a & grams_b) / len(union) if union else 1.0


def mean_pairwise_similarity(responses_by_prompt: Mapping[str, Sequence[str]]) -> float | None:
    """Mean Jaccard similarity over all pairs of responses that share a prompt. With one response per prompt
    (samples_per_prompt=1, PPO's default), over neighbouring responses of the batch instead (B − 1 pairs, each
    two prompts): answers to different questions that converge on one template are the collapse to see there.
    None with fewer than two responses."""
    similarities = [jaccard_similarity(a, b)
                    for responses in responses_by_prompt.values() for a, b in combinations(responses, 2)]
    if not similarities:
        flat = [text for responses in responses_by_prompt.values() for text in responses]
        similarities = [jaccard_similarity(a, b) for a, b in zip(flat, flat[1:])]
    return statistics.fmean(similarities) if similarities else None


def phrase_tokens(phrases: Iterable[str]) -> list[tuple[str, ...]]:
    """Phrases tokenised like responses (so '总而言之' is four tokens), longest first, empty ones dropped."""
    tokenised = {tuple(text_tokens(phrase)) for phrase in phrases}
    return sorted((p for p in tokenised if p), key=lambda p: (-len(p), p))


def filler_density(text: str, phrases: Sequence[tuple[str, ...]]) -> float:
    """Share of `text`'s tokens inside filler/jargon phrase occurrences (non-overlapping, longest phrase
    first at each position), in [0, 1]; 0 for text without tokens. `phrases` from phrase_tokens()."""
    tokens = text_tokens(text)
    covered, i = 0, 0
    while i < len(tokens):
        match = next((p for p in phrases if tuple(tokens[i:i + len(p)]) == p), None)
        if match:
            covered += len(match)
            i += len(match)
        else:
            i += 1
    return covered / len(tokens) if tokens else 0.0


def response_metrics(responses_by_prompt: Mapping[str, Sequence[str]],
                     phrases: Sequence[tuple[str, ...]]) -> dict[str, float]:
    """Diversity and quality-proxy metrics of one step's responses (prompt → its sampled responses):
    distinct_1, distinct_2, filler_density (mean over responses), mean_chars, and pairwise_similarity when
    some prompt has two or more responses. Empty input → {}."""
    responses = [text for group in responses_by_prompt.values() for text in group]
    if not responses:
        return {}
    metrics = {
        DISTINCT_1: distinct_n(responses, 1),
        DISTINCT_2: distinct_n(responses, 2),
        FILLER_DENSITY: statistics.fmean(filler_density(text, phrases) for text in responses),
        MEAN_CHARS: statistics.fmean(len(text) for text in responses),
    }
    similarity = mean_pairwise_similarity(responses_by_prompt)
    if similarity is not None:
        metrics[PAIRWISE_SIMILARITY] = similarity
    return metrics
