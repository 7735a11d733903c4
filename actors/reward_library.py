"""Verifiable reward functions shipped with rayalign, for ppo.reward.functions (actors/reward_functions.py):

    actors.reward_library:numeric_answer   1 when the response's final answer equals the record's `answer` column
                                           (a number, or a worked solution ending in '#### <number>' as in GSM8K)
    actors.reward_library:regex_format     1 when the response matches a pattern (kwargs: pattern, full)
    actors.reward_library:mentions_answer  1 when the response names the record's `answer` (whole words)

A final answer is the number after the last '####' (GSM8K's convention) when there is one, else the last number
in the response; "1,000", "1000" and "1000.0" are the same answer, and so are "-3" and "−3".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Sequence

NUMBER = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
MARKED = re.compile(r"####\s*([-−]?[\d,]*\.?\d+)")


def final_number(text: str) -> Decimal | None:
    """The response's final answer as an exact decimal, or None when it states no number."""
    marked = MARKED.findall(text)
    candidates = marked or NUMBER.findall(text)
    return _decimal(candidates[-1]) if candidates else None


def _decimal(token: str | int | float | None) -> Decimal | None:
    if token is None:
        return None
    try:
        return Decimal(str(token).replace(",", "").replace("−", "-").strip()).normalize()
    except InvalidOperation:
        return None


def numeric_answer(prompts: Sequence, responses: Sequence[str], answer: Sequence) -> list[float]:
    """1.0 when the final number of each response equals its record's `answer` (a number, numeric text, or text
    ending in '#### <number>': GSM8K's answer column holds the worked solution). An answer that is none of these
    raises, naming it: scoring 0 would train against every response to that record."""
    scores = []
    for response, expected in zip(responses, answer, strict=True):
        got, want = final_number(response), expected_number(expected)
        scores.append(1.0 if got is not None and got == want else 0.0)
    return scores


def expected_number(expected) -> Decimal:
    """A record's answer as a decimal: a number, numeric text, or the number after its last '####'."""
    marked = MARKED.findall(expected) if isinstance(expected, str) else []
    want = _decimal(marked[-1]) if marked else _decimal(expected)
    if want is None:
        raise ValueError(f"answer {str(expected)[:80]!r} is neither a number nor text ending in '#### <number>'")
    return want


def regex_format(prompts: Sequence, responses: Sequence[str], pattern: str, full: bool = False) -> list[float]:
    """1.0 when the response matches `pattern` (anywhere, or the whole response with full=true; DOTALL)."""
    compiled = re.compile(pattern, re.DOTALL)
    match = compiled.fullmatch if full else compiled.search
    return [1.0 if match(response.strip() if full else response) else 0.0 for response in responses]


def mentions_answer(prompts: Sequence, responses: Sequence[str], answer: Sequence[str]) -> list[float]:
    """1.0 when the response names its record's `answer` as a whole word (case-insensitive; a plural 's' too). Word
    edges are 'no word character on either side' rather than \\b, which never matches after an answer ending in a
    symbol ('C++', 'C#')."""
    return [1.0 if re.search(rf"(?<!\w){re.escape(str(word))}s?(?!\w)", response, re.IGNORECASE) else 0.0
            for response, word in zip(responses, answer, strict=True)]
