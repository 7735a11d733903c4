"""The quality gates: named rules, each built from CurateConfig, each judging one record at a time.

A rule returns None (passes) or a Decision:
    drop   : the record leaves the set; counted under this rule
    review : the record goes to the human-review queue instead of being silently kept
    accept : a reviewer already cleared it: later review decisions are waived (drops still apply)
    note   : it passes, but the report counts it (e.g. records without ratings pass the annotator gate;
             an accept is counted the same way)
`evaluate` runs the rules in the configured order and stops at the first drop, so every dropped record is
counted under exactly one rule and the report's counts add up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from statistics import fmean

from actors.algo.lexicon import DEFAULT_ALLOW, DEFAULT_HIGH_SEVERITY, Lexicon, LexiconError, verdict_of
from actors.algo.registry import Registry
from actors.algo.text import longest_repeated_span, unique_token_ratio
from common.config import CurateConfig, resolve_path
from common.errors import ConfigError, RecordError
from common.records import last_response
from jobs.curation.facts import FactVerifier, extract_claims, load_verifier
from jobs.curation.review import read_verdicts
from jobs.curation.rows import assistant_text


def replies(record: dict) -> list[str]:
    """Every assistant turn: SFT trains on all of them (actors/chat.py), so the repetition rules read each one (gated
    on the last alone, a first reply of 400 repeated words was kept). [''] with none."""
    return [m["content"] for m in record["messages"] if m["role"] == "assistant"] or [""]


def _turn(index: int, record: dict) -> str:
    """' (reply k of n)' for a multi-turn record, so a person finds the turn a reason is about; '' otherwise."""
    count = sum(1 for m in record["messages"] if m["role"] == "assistant")
    return f" (reply {index + 1} of {count})" if count > 1 else ""


@dataclass(frozen=True)
class Decision:
    action: str  # "drop" | "review" | "accept" | "note"
    rule: str
    reason: str


@dataclass(frozen=True)
class Outcome:
    status: str  # "keep" | "drop" | "review"
    rules: tuple[str, ...] = ()  # drop: the one rule; review: every rule that asked for review
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # rules that passed the record with a remark


class Rule(ABC):
    name: str = ""
    note_meaning: str = ""  # what the report's "noted" count means for this rule

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: CurateConfig) -> "Rule":
        ...

    @abstractmethod
    def check(self, record: dict) -> Decision | None:
        ...

    def threshold(self) -> str:
        """The setting this rule applies, for the report."""
        return ""

    def _decide(self, action: str, reason: str) -> Decision:
        return Decision(action, self.name, reason)


RULES: Registry[type[Rule]] = Registry("curation rule")


def register(name: str):
    def add(cls: type[Rule]) -> type[Rule]:
        cls.name = name
        return RULES.register(name)(cls)
    return add


def build_rules(cfg: CurateConfig) -> list[Rule]:
    """The configured rules in order; resources (lexicon, knowledge base, verdicts) load here, once."""
    unknown = [name for name in cfg.rules if name not in RULES]
    if unknown:
        raise ConfigError(f"curate.rules: unknown rules {unknown}; known: {RULES.names()}")
    return [RULES.get(name).from_config(cfg) for name in cfg.rules]


def evaluate(record: dict, rules: list[Rule]) -> Outcome:
    reviews: list[Decision] = []
    notes: list[str] = []
    accepted = False
    for rule in rules:
        decision = rule.check(record)
        if decision is None:
            continue
        if decision.action == "drop":
            return Outcome("drop", (decision.rule,), (decision.reason,), tuple(notes))
        if decision.action == "review":
            reviews.append(decision)
        else:
            accepted = accepted or decision.action == "accept"
            notes.append(decision.rule)
    if reviews and not accepted:
        return Outcome("review", tuple(d.rule for d in reviews), tuple(d.reason for d in reviews), tuple(notes))
    return Outcome("keep", notes=tuple(notes))


@register("reviewer")
@dataclass
class ReviewerRule(Rule):
    """Reviewers' verdicts from an earlier run, looked up by the record's content id (rows.record_id, which
    the pipeline puts on each record) or its source: reject → drop, accept → keep even if a rule wants
    review."""
    verdicts: dict[str, str] = field(default_factory=dict)  # record id or source → "accept" | "reject"
    note_meaning = "accepted by a reviewer"

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "ReviewerRule":
        return cls(read_verdicts(resolve_path(cfg.review_verdicts)) if cfg.review_verdicts else {})

    def check(self, record: dict) -> Decision | None:
        verdict = self.verdicts.get(record.get("id", "")) or self.verdicts.get(record.get("source", ""))
        if verdict == "reject":
            return self._decide("drop", "rejected by a reviewer")
        if verdict == "accept":
            return self._decide("accept", "accepted by a reviewer")
        return None

    def threshold(self) -> str:
        return f"{len(self.verdicts)} verdicts"


@register("annotator")
@dataclass
class AnnotatorRule(Rule):
    """The seed's "each record rated by 3 annotators, mean below 4.0 dropped": a low mean drops the record;
    too few distinct annotators, or annotators who disagree by more than max_spread, send it to review (a
    human looks, rather than trusting or discarding a thin or split verdict). A low mean is a drop even when
    the record also has too few annotators: evaluate stops at the first drop, and the report counts it there.
    Records with no ratings at all pass with a note: unrated sources (web dumps, synthetic data) are not
    annotated data, and the other gates judge them."""
    min_rating: float
    min_annotators: int
    max_spread: float
    note_meaning = "no ratings: passed"

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "AnnotatorRule":
        return cls(cfg.min_rating, cfg.min_annotators, cfg.max_rating_spread)

    def check(self, record: dict) -> Decision | None:
        ratings = record.get("ratings")
        if not ratings:
            return self._decide("note", "no annotator ratings")
        mean = fmean(ratings)
        if mean < self.min_rating:
            return self._decide("drop", f"mean rating {mean:.2f} < {self.min_rating}")
        reasons = []
        count = annotator_count(record)
        if count < self.min_annotators:
            reasons.append(f"{count} annotators < curate.min_annotators {self.min_annotators}")
        spread = max(ratings) - min(ratings)
        if spread > self.max_spread:
            reasons.append(f"ratings {_listed(record)} differ by {spread:g} > curate.max_rating_spread "
                           f"{self.max_spread:g}")
        return self._decide("review", "; ".join(reasons)) if reasons else None

    def threshold(self) -> str:
        return (f"mean rating >= {self.min_rating}; review below {self.min_annotators} annotators or a spread "
                f"over {self.max_spread:g}")


def annotator_count(record: dict) -> int:
    """Distinct annotators of a rated record; anonymous ratings (no `annotators`) count one each, the reading
    under which a plain list like [4, 5, 4] has always meant three annotators."""
    annotators = record.get("annotators")
    return len(set(annotators)) if annotators else len(record["ratings"])


def _listed(record: dict) -> str:
    ratings = [f"{r:g}" for r in record["ratings"]]
    annotators = record.get("annotators")
    return ", ".join(f"{a}={r}" for a, r in zip(annotators, ratings)) if annotators else ", ".join(ratings)


@register("length")
@dataclass
class LengthRule(Rule):
    """Characters (a Chinese reply counts per character): the final reply (the record's answer) at least
    min_chars, every reply at most max_chars. Earlier replies of a multi-turn chat may be short by nature
    ("Sure."), but one 8,000 characters long is as much a training target as the last."""
    min_chars: int
    max_chars: int

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "LengthRule":
        return cls(cfg.min_chars, cfg.max_chars)

    def check(self, record: dict) -> Decision | None:
        chars = len(last_response(record))
        if chars < self.min_chars:
            return self._decide("drop", f"response has {chars} characters < {self.min_chars}")
        for index, reply in enumerate(replies(record)):
            if len(reply) > self.max_chars:
                return self._decide("drop", f"response has {len(reply)} characters > {self.max_chars}"
                                            f"{_turn(index, record)}")
        return None

    def threshold(self) -> str:
        return f"{self.min_chars}-{self.max_chars} characters"


@register("unique_tokens")
@dataclass
class UniqueTokensRule(Rule):
    min_ratio: float
    window: int = 0  # tokens per window of the moving-average ratio (actors/algo/text.py); 0: the whole reply

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "UniqueTokensRule":
        return cls(cfg.min_unique_token_ratio, cfg.unique_token_window)

    def check(self, record: dict) -> Decision | None:
        for index, reply in enumerate(replies(record)):
            ratio = unique_token_ratio(reply, window=self.window)
            if ratio < self.min_ratio:
                return self._decide("drop", f"unique-token ratio {ratio:.2f} < {self.min_ratio}{_turn(index, record)}")
        return None

    def threshold(self) -> str:
        over = f" over {self.window}-token windows" if self.window else ""
        return f"unique-token ratio >= {self.min_ratio}{over}"


@register("repeated_span")
@dataclass
class RepeatedSpanRule(Rule):
    max_span: int

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "RepeatedSpanRule":
        return cls(cfg.max_repeated_span)

    def check(self, record: dict) -> Decision | None:
        for index, reply in enumerate(replies(record)):
            span = longest_repeated_span(reply)
            if span >= self.max_span:
                return self._decide("drop", f"a {span}-token span occurs twice (limit {self.max_span})"
                                            f"{_turn(index, record)}")
        return None

    def threshold(self) -> str:
        return f"repeated span < {self.max_span} tokens"


@register("lexicon")
@dataclass
class LexiconRule(Rule):
    lexicon: Lexicon

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "LexiconRule":
        high = DEFAULT_HIGH_SEVERITY if cfg.lexicon_high_severity is None else cfg.lexicon_high_severity
        allow = DEFAULT_ALLOW if cfg.lexicon_allow is None else cfg.lexicon_allow
        try:
            return cls(Lexicon.load(resolve_path(cfg.lexicon_dir), high, allow=allow,
                                    harmful_min_terms=cfg.lexicon_harmful_min_terms))
        except LexiconError as exc:
            raise RecordError(f"curate.lexicon_dir: {exc}") from None

    def check(self, record: dict) -> Decision | None:
        hits = self.lexicon.find(assistant_text(record))
        verdict = verdict_of(hits, self.lexicon.harmful_min_terms)
        if verdict == "clean":
            return None
        terms = ", ".join(sorted({f"{h.term} ({h.list_name}, {h.severity})" for h in hits}))
        return self._decide("drop" if verdict == "harmful" else "review", f"{verdict}: {terms}")

    def threshold(self) -> str:
        return (f"{len(self.lexicon)} terms; harmful = a high-severity hit or >= "
                f"{self.lexicon.harmful_min_terms} distinct terms")


@register("fact_check")
@dataclass
class FactCheckRule(Rule):
    """Disagreements with the verifier go to review: a knowledge base can be stale, a human decides."""
    verifier: FactVerifier | None

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> "FactCheckRule":
        return cls(load_verifier(cfg))

    def check(self, record: dict) -> Decision | None:
        if self.verifier is None:
            return None
        disagreements = [f for claim in extract_claims(record) for f in self.verifier.verify(claim)
                         if f.status == "disagree"]
        if not disagreements:
            return None
        reason = "; ".join(f"{f.claim!r} says {f.found}, {f.evidence}" for f in disagreements)
        return self._decide("review", f"fact disagreement: {reason}")

    def threshold(self) -> str:
        return type(self.verifier).__name__ if self.verifier else "off (curate.fact_verifier unset)"
