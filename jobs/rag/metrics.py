"""Answer metrics against a reference answer (pure), as SQuAD scores them, with CJK text split into characters:

  normalise   lower case, punctuation and the articles a / an / the dropped, whitespace collapsed; each CJK
              character is a token of its own (Chinese has no spaces between words)
  exact       the normalised answer equals the normalised reference
  f1          token F1 between them (bag of tokens: precision and recall of the shared ones)
  contains    the normalised reference occurs inside the normalised answer (a generative model rarely answers
              in exactly the reference's words)
and retrieval recall@k: the share of questions whose gold document is among the top k chunks' documents."""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff])")
_PUNCTUATION = set(string.punctuation) | {"。", "，", "、", "；", "：", "？", "！", "《", "》", "（", "）", "“", "”"}


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return _CJK.sub(r" \1 ", text).split()


def normalise(text: str) -> str:
    return " ".join(tokens(text))


def exact(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


def contains(answer: str, reference: str) -> float:
    wanted = normalise(reference)
    return float(bool(wanted) and f" {wanted} " in f" {normalise(answer)} ")


def f1(answer: str, reference: str) -> float:
    got, want = tokens(answer), tokens(reference)
    shared = sum((Counter(got) & Counter(want)).values())
    if not shared:
        return 0.0
    precision, recall = shared / len(got), shared / len(want)
    return 2 * precision * recall / (precision + recall)


def recall_at_k(retrieved: list[list[str]], gold: list[str | None]) -> float | None:
    """Share of the questions with a gold document whose retrieved chunks include it; None when none has one."""
    judged = [(docs, want) for docs, want in zip(retrieved, gold) if want is not None]
    if not judged:
        return None
    return sum(want in docs for docs, want in judged) / len(judged)
