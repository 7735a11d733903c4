"""Fact checking: checkable claims out of assistant replies, and a pluggable verifier to judge them.

Claim extraction is deliberately simple: an assistant sentence is a claim when it carries a checkable
value — a date (2001年12月28日, 2001-12-28, December 28, 2001, or a bare year 1000–2099), a number, or a
name (a capitalised word sequence, or a 《title》). Every claim keeps the conversation before it as
context, because dialogue names its subject once and then says "it" (看过《我是山姆》吗？ → 它是…上映的).

Verifiers implement `FactVerifier.verify(claim) -> [Finding]`. The shipped one, `KnowledgeBaseVerifier`
("kb"), reads a JSONL of facts:

    {"subject": "Australia", "attribute": "capital", "value": "Canberra"}
    {"subject": "nitrogen", "attribute": "boiling point", "value": "-195.8", "unit": "degrees Celsius"}
    {"subject": "我是山姆", "attribute": "上映时间", "value": "2001年12月28日", "cues": ["上映"]}

optional keys: "aliases" (other names of the subject), "cues" (words that signal the attribute in a
sentence; default: the attribute itself), "unit" (a number only counts when the unit follows it). A fact
applies to a claim when one of its cues is in the sentence and the sentence is about its subject: the
subject (or an alias) is named in the sentence, or, when the sentence names no known subject, it is the
known subject named last before it ("it" means the latest thing talked about; dialogue drifts from a film
to its director, so an earlier mention does not count). It then agrees when the sentence holds the fact's value (numbers
within `rel_tol`, dates on every component the sentence states), disagrees when the sentence holds another
value of the same kind, and says nothing otherwise. A web verifier is a user's plug-in: subclass
FactVerifier and name it as curate.fact_verifier=package.module:Class.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import unicodedata
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from actors.algo.registry import Registry
from common.config import CurateConfig, resolve_path
from common.errors import ConfigError, RecordError

MONTHS = {name: i for i, name in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"), start=1)}
_MONTH = "|".join(MONTHS)
_DATE_PATTERNS = (
    re.compile(r"(?P<y>\d{3,4})\s*年(?:\s*(?P<m>\d{1,2})\s*月(?:\s*(?P<d>\d{1,2})\s*[日号])?)?"),
    re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b"),
    re.compile(rf"\b(?P<mname>{_MONTH})\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y>\d{{4}})\b", re.I),
    re.compile(rf"\b(?P<d>\d{{1,2}})\s+(?P<mname>{_MONTH}),?\s+(?P<y>\d{{4}})\b", re.I),
    re.compile(r"(?<![\d.,])(?P<y>1\d{3}|20\d{2})(?![\d.,]\d)"),
)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?|(?<=[^\W\d_])\d+(?:\.\d+)?")
_NAME = re.compile(r"《[^》]+》|\b[A-Z][\w'’.-]*(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][\w'’.-]*)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？；;])|\n+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
# Capitalised without being names of things a fact could be about.
_NOT_NAMES = {"i", *MONTHS}

Date = tuple[int, int | None, int | None]


@dataclass(frozen=True)
class Claim:
    sentence: str
    context: str  # the conversation before the sentence
    dates: tuple[Date, ...]
    numbers: tuple[tuple[float, int], ...]  # (value, end offset in the sentence) so a unit can follow it
    names: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    status: str  # "agree" | "disagree"
    claim: str  # the sentence
    expected: str  # what the verifier's source says
    found: str  # what the sentence says
    evidence: str  # where the expectation comes from (a fact, a URL, ...)


class FactVerifier(ABC):
    """Plug-in interface; `from_config` lets a plug-in read its own settings (a URL, a key file)."""

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "FactVerifier":
        return cls()

    @abstractmethod
    def verify(self, claim: Claim) -> list[Finding]:
        """Findings for the facts this verifier can judge in `claim` (empty when it knows nothing)."""


VERIFIERS: Registry[type[FactVerifier]] = Registry("fact verifier")


def load_verifier(cfg: CurateConfig) -> FactVerifier | None:
    """The configured verifier: a registered name or 'package.module:Class'; None when fact checking is off."""
    name = cfg.fact_verifier
    if name is None:
        return None
    if name in VERIFIERS:
        return VERIFIERS.get(name).from_config(cfg)
    module_name, _, class_name = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"curate.fact_verifier {name!r} is neither one of {VERIFIERS.names()} nor an "
                          f"importable 'package.module:Class' ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, FactVerifier)):
        raise ConfigError(f"curate.fact_verifier {name!r} is not a FactVerifier subclass")
    return cls.from_config(cfg)


def extract_claims(record: dict) -> list[Claim]:
    """Claims of the assistant turns; each one's context is everything said before it, earlier sentences
    of its own turn included."""
    claims = []
    for i, message in enumerate(record["messages"]):
        if message["role"] != "assistant":
            continue
        context = [m["content"] for m in record["messages"][:i]]
        for sentence in split_sentences(message["content"]):
            claim = make_claim(sentence, "\n".join(context))
            if claim.dates or claim.numbers or claim.names:
                claims.append(claim)
            context.append(sentence)
    return claims


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def make_claim(sentence: str, context: str = "") -> Claim:
    return Claim(sentence, context, find_dates(sentence),
                 tuple((_to_float(m.group()), m.end()) for m in _NUMBER.finditer(sentence)), find_names(sentence))


def find_names(sentence: str) -> tuple[str, ...]:
    """Capitalised word sequences and 《titles》. A single capitalised word that opens the sentence is
    skipped: it is capitalised by position ("Sure.", "Yes, ..."), so a name there is missed instead."""
    names = []
    for m in _NAME.finditer(sentence):
        name = _clean_name(m.group())
        opens_sentence = m.start() == len(sentence) - len(sentence.lstrip()) and " " not in name
        if not opens_sentence and name.lower() not in _NOT_NAMES:
            names.append(name)
    return tuple(names)


def find_dates(text: str) -> tuple[Date, ...]:
    """Dates in `text`, each once, most specific first (so "2001年12月28日" is not also read as 2001)."""
    found: list[Date] = []
    taken: list[tuple[int, int]] = []
    for pattern in _DATE_PATTERNS:
        for m in pattern.finditer(text):
            if any(start < m.end() and m.start() < end for start, end in taken):
                continue
            taken.append(m.span())
            parts = m.groupdict()
            month = MONTHS[parts["mname"].lower()] if parts.get("mname") else _int_or_none(parts.get("m"))
            found.append((int(parts["y"]), month, _int_or_none(parts.get("d"))))
    return tuple(found)


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text else None


def _to_float(text: str) -> float:
    return float(text.replace(",", ""))


def _clean_name(name: str) -> str:
    """"The United Kingdom." → "United Kingdom": the article and the full stop are not part of the name."""
    name = name.rstrip(".,")
    return name[4:] if name.startswith("The ") and name[4:] else name


def fold(text: str) -> str:
    """Case- and accent-insensitive form (Brasília = Brasilia)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


class Phrase:
    """A phrase to look for in folded text: whole words for Latin phrases, a substring for Chinese ones
    (Chinese has no spaces between words)."""

    def __init__(self, phrase: str):
        self.folded = fold(phrase)
        self.pattern = None if _CJK.search(self.folded) else re.compile(rf"(?<!\w){re.escape(self.folded)}(?!\w)")

    def last_in(self, folded_text: str) -> int:
        """Offset of the last mention in already-folded text, -1 when there is none."""
        if self.pattern is None:
            return folded_text.rfind(self.folded)
        starts = [m.start() for m in self.pattern.finditer(folded_text)]
        return starts[-1] if starts else -1

    def occurs_in(self, folded_text: str) -> bool:
        if self.pattern is None:
            return self.folded in folded_text
        return self.pattern.search(folded_text) is not None


def mentions(text: str, phrase: str) -> bool:
    return Phrase(phrase).occurs_in(fold(text))


@dataclass(frozen=True)
class Fact:
    subject: str
    attribute: str
    value: str
    aliases: tuple[str, ...] = ()
    cues: tuple[str, ...] = ()
    unit: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.subject, *self.aliases)

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.subject} / {self.attribute} = {self.value}{unit}"


FACT_KEYS = {"subject", "attribute", "value", "aliases", "cues", "unit"}


@VERIFIERS.register("kb")
class KnowledgeBaseVerifier(FactVerifier):
    """Checks claims against a local JSONL knowledge base (module docstring: format and matching rule)."""

    def __init__(self, facts: list[Fact], rel_tol: float = 0.02):
        self.rel_tol = rel_tol
        self.by_subject: dict[str, list[Fact]] = {}
        names: dict[str, set[str]] = {}  # subject → its name and every alias any of its facts gives
        for fact in facts:
            self.by_subject.setdefault(fact.subject, []).append(fact)
            names.setdefault(fact.subject, set()).update(fact.names)
        self.names = {subject: [Phrase(n) for n in sorted(ns)] for subject, ns in names.items()}
        self.cues = {fact: [Phrase(c) for c in fact.cues or (fact.attribute,)] for fact in facts}

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "KnowledgeBaseVerifier":
        return cls(read_facts(resolve_path(cfg.facts_file)), cfg.fact_rel_tol)

    def verify(self, claim: Claim) -> list[Finding]:
        sentence = fold(claim.sentence)
        findings = []
        for subject in self._subjects(sentence, fold(claim.context)):
            for fact in self.by_subject[subject]:
                if any(cue.occurs_in(sentence) for cue in self.cues[fact]):
                    finding = self._judge(fact, claim)
                    if finding is not None:
                        findings.append(finding)
        return findings

    def _subjects(self, sentence: str, context: str) -> list[str]:
        named = [s for s, names in self.names.items() if any(n.occurs_in(sentence) for n in names)]
        if named:
            return named
        last = {s: max(n.last_in(context) for n in names) for s, names in self.names.items()}
        latest = max(last, key=last.get, default=None)
        return [latest] if latest is not None and last[latest] >= 0 else []

    def _judge(self, fact: Fact, claim: Claim) -> Finding | None:
        """The fact's value decides what kind of value in the sentence competes with it."""
        if _is_plain_number(fact.value):
            return self._judge_number(fact, claim, _to_float(fact.value))
        expected_dates = find_dates(fact.value)
        if len(expected_dates) == 1:
            return self._judge_date(fact, claim, expected_dates[0])
        return self._judge_name(fact, claim)

    def _finding(self, status: str, fact: Fact, claim: Claim, found: str) -> Finding:
        return Finding(status, claim.sentence, fact.value + (f" {fact.unit}" if fact.unit else ""), found,
                       f"kb: {fact.describe()}")

    def _judge_date(self, fact: Fact, claim: Claim, expected: Date) -> Finding | None:
        if not claim.dates:
            return None
        match = next((d for d in claim.dates if _same_date(d, expected)), None)
        if match is not None:
            return self._finding("agree", fact, claim, _date_text(match))
        return self._finding("disagree", fact, claim, ", ".join(_date_text(d) for d in claim.dates))

    def _judge_number(self, fact: Fact, claim: Claim, expected: float) -> Finding | None:
        stated = [value for value, end in claim.numbers
                  if fact.unit is None or fold(claim.sentence[end:].lstrip()).startswith(fold(fact.unit))]
        if not stated:
            return None
        close = [v for v in stated if math.isclose(v, expected, rel_tol=self.rel_tol, abs_tol=1e-9)]
        status = "agree" if close else "disagree"
        return self._finding(status, fact, claim, ", ".join(f"{v:g}" for v in (close or stated)))

    def _judge_name(self, fact: Fact, claim: Claim) -> Finding | None:
        if mentions(claim.sentence, fact.value):
            return self._finding("agree", fact, claim, fact.value)
        others = [n for n in claim.names if not _overlaps_known(n, fact)]
        if not others:
            return None
        return self._finding("disagree", fact, claim, ", ".join(others))


def _is_plain_number(text: str) -> bool:
    return re.fullmatch(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text.strip()) is not None


def _same_date(stated: Date, expected: Date) -> bool:
    """Equal on every component both dates state: "2001年" agrees with 2001-12-28, "2002年" does not."""
    return all(a is None or b is None or a == b for a, b in zip(stated, expected))


def _date_text(date: Date) -> str:
    return "-".join(str(part) for part in date if part is not None)


def _overlaps_known(name: str, fact: Fact) -> bool:
    """A name in the sentence that is the subject or the attribute itself is not a competing value."""
    return any(mentions(known, name) or mentions(name, known)
               for known in (*fact.names, fact.attribute, *fact.cues))


def read_facts(path: Path) -> list[Fact]:
    if not path.is_file():
        raise RecordError(f"{path}: knowledge-base file does not exist")
    facts = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                facts.append(_parse_fact(line, f"{path}:{lineno}"))
    if not facts:
        raise RecordError(f"{path}: knowledge base holds no facts")
    return facts


def _parse_fact(line: str, where: str) -> Fact:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = set(row) - FACT_KEYS
    if unknown:
        raise RecordError(f"{where}: unknown keys {sorted(unknown)}; a fact has {sorted(FACT_KEYS)}")
    for key in ("subject", "attribute", "value"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise RecordError(f"{where}: {key!r} must be non-empty text, got {row.get(key)!r}")
    for key in ("aliases", "cues"):
        if not isinstance(row.get(key, []), list):
            raise RecordError(f"{where}: {key!r} must be a list of text")
    return Fact(row["subject"], row["attribute"], row["value"], tuple(row.get("aliases", ())),
                tuple(row.get("cues", ())), row.get("unit"))
