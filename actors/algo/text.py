"""Language-aware text statistics shared by curation (quality gates) and PPO (reward terms, monitors).

Pure Python. "Tokens" here are words for space-separated scripts and single characters for CJK, so a
Chinese sentence is measured as fairly as an English one (no model tokenizer involved).
"""

from __future__ import annotations

import re

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A word is a run of letters/digits that are not CJK, so "sb吗" is ["sb", "吗"], not one word.
_WORDS = rf"[{_CJK}]|[^\W_{_CJK}]+(?:'[^\W_{_CJK}]+)*"
_TOKEN = re.compile(_WORDS, re.UNICODE)
# With symbols: every punctuation mark or other symbol is a token too. A generated reply that loops on
# '”' or '!' has no words at all, so a words-only count would call it perfectly varied.
_TOKEN_WITH_SYMBOLS = re.compile(rf"{_WORDS}|[^\w\s]", re.UNICODE)


def text_tokens(text: str, symbols: bool = False) -> list[str]:
    """Lower-cased words, with every CJK character its own token; punctuation dropped unless `symbols`."""
    pattern = _TOKEN_WITH_SYMBOLS if symbols else _TOKEN
    return [t.lower() for t in pattern.findall(text)]


def unique_token_ratio(text: str, symbols: bool = False, window: int = 0) -> float:
    """Distinct tokens / tokens (1.0 for empty text: nothing repeats). With a `window` shorter than the text: the
    mean of that ratio over every run of `window` consecutive tokens (the moving-average type-token ratio, MATTR;
    Covington & McFall 2010). A plain ratio falls with length however varied the text (function words recur), so
    a long answer fails a fixed bar that a short one passes; the windowed one measures repetition alone."""
    tokens = text_tokens(text, symbols)
    if not tokens:
        return 1.0
    if not 0 < window < len(tokens):
        return len(set(tokens)) / len(tokens)
    counts: dict[str, int] = {}
    for token in tokens[:window]:
        counts[token] = counts.get(token, 0) + 1
    distinct_sum = len(counts)
    for leaving, entering in zip(tokens, tokens[window:]):  # slide by one token: O(n)
        counts[leaving] -= 1
        if not counts[leaving]:
            del counts[leaving]
        counts[entering] = counts.get(entering, 0) + 1
        distinct_sum += len(counts)
    return distinct_sum / (window * (len(tokens) - window + 1))


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / n-grams over a set of texts (Li et al. 2016); 0.0 when there are no n-grams."""
    grams = [g for text in texts for g in ngrams(text_tokens(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def longest_repeated_span(text: str) -> int:
    """Length in tokens of the longest token span that occurs at least twice (non-overlapping)."""
    tokens = text_tokens(text)
    best = 0
    # Binary search on the span length: if a span of length k repeats, so does one of length k-1.
    lo, hi = 1, len(tokens) // 2
    while lo <= hi:
        mid = (lo + hi) // 2
        if _has_repeat(tokens, mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _has_repeat(tokens: list[str], k: int) -> bool:
    first_seen: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - k + 1):
        gram = tuple(tokens[i:i + k])
        start = first_seen.setdefault(gram, i)
        if i - start >= k:
            return True
    return False


def repeated_ngram_fraction(text: str, n: int = 3, symbols: bool = False) -> float:
    """Share of n-gram occurrences that repeat an earlier n-gram of the same text."""
    grams = ngrams(text_tokens(text, symbols), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0
