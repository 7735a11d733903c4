"""The curation section (jobs.curate): sources, mix, quality gates, diversity filter, spot check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common.configlib import param
from common.errors import ConfigError


@dataclass(frozen=True)
class CurateConfig:
    sources: list[dict] = param([], "source files or folders, each {path, category, limit?} with category a key "
                                    "of mix (general/domain/multi_turn/edge); earlier sources win near-duplicate ties")
    mix: dict[str, float] = param({"general": 0.4, "domain": 0.3, "multi_turn": 0.2, "edge": 0.1},
                                  "target share of each category")
    target_size: Optional[int] = param(None, "records in the curated set (unset: as many as the mix allows)", gt=0)
    min_rating: float = param(4.0, "drop records whose mean annotator rating is below this", ge=0.0)
    min_annotators: int = param(3, "a rated record with fewer distinct annotators goes to the review queue (a "
                                   "list of plain numbers counts one annotator per rating); records with no "
                                   "ratings at all pass: unrated sources (web dumps, synthetic data) are not "
                                   "annotated data", ge=1)
    max_rating_spread: float = param(2.0, "a record whose highest and lowest rating differ by more than this goes "
                                          "to the review queue: its annotators disagree (2.0 on a 1-5 scale lets "
                                          "4 and 2 pass, not 5 and 2)", ge=0.0)
    min_chars: int = param(10, "shortest final response kept, in characters (Chinese: per character)", ge=0)
    max_chars: int = param(2000, "longest response kept, in characters (every assistant reply)", gt=0)
    min_unique_token_ratio: float = param(0.70, "distinct tokens / tokens below this → drop (every assistant reply; "
                                                "over windows of unique_token_window tokens)", ge=0.0, le=1.0)
    unique_token_window: int = param(50, "the unique-token ratio is averaged over every run of this many tokens "
                                         "(moving-average type-token ratio), so it measures repetition rather than "
                                         "length: the plain ratio of a varied 1,000-character answer is below 0.70 "
                                         "(113 of the shared OASST replies failed it, none above 1,000 characters "
                                         "passed); 0: the ratio over the whole reply", ge=0)
    max_similarity: float = param(0.85, "keep a record only if its cosine similarity to every kept one is below",
                                  gt=0.0, le=1.0)
    spot_check_fraction: float = param(0.30, "share of kept records sent to human spot-check", ge=0.0, le=1.0)
    lexicon_dir: str = param("../shared/data/lexicons", "folder of harmful-word lists")
    rules: list[str] = param(["reviewer", "annotator", "length", "unique_tokens", "repeated_span", "lexicon",
                              "fact_check"],
                             "quality gates in the order they run; a record is counted under the first rule "
                             "that drops it")
    max_repeated_span: int = param(20, "drop a response in which a span of this many tokens occurs twice "
                                       "(a copied sentence or a generation loop)", ge=1)
    lexicon_high_severity: Optional[list[str]] = param(
        None, "word lists whose hits alone make a text harmful (unset: "
              "actors.algo.lexicon.DEFAULT_HIGH_SEVERITY, the violence and tagged lists)")
    lexicon_allow: Optional[list[str]] = param(
        None, "everyday words never flagged although a list carries them (unset: actors.algo.lexicon.DEFAULT_ALLOW)")
    lexicon_harmful_min_terms: int = param(2, "this many distinct low-severity terms make a text harmful (drop); "
                                              "fewer go to the review queue", ge=1)
    fact_verifier: Optional[str] = param(None, "'kb' (the facts_file knowledge base) or 'package.module:Class' "
                                               "(a FactVerifier plug-in); unset: no fact check")
    facts_file: Optional[str] = param(None, "JSONL knowledge base of {subject, attribute, value} facts for "
                                            "fact_verifier=kb")
    fact_rel_tol: float = param(0.02, "numbers within this relative difference agree with the knowledge base",
                                ge=0.0, lt=1.0)
    review_verdicts: Optional[str] = param(None, "JSONL of reviewer verdicts {id or source, verdict: accept|reject} "
                                                 "(e.g. an edited spot_check.jsonl): rejected records are dropped, "
                                                 "accepted ones skip the review queue")
    gate_workers: int = param(1, "Ray actors running the quality gates", gt=0)
    embed_workers: int = param(1, "Ray actors computing sentence embeddings", gt=0)
    embed_batch_size: int = param(64, "records per embedding batch", gt=0)
    embed_max_tokens: int = param(128, "word pieces of each conversation the encoder reads (all-MiniLM-L6-v2 "
                                       "was trained on 128; its hard limit is 256)", gt=0, le=256)
    dedup_block_size: int = param(1024, "candidates compared per matrix product in the diversity filter", gt=0)
    report_pairs: int = param(5, "closest (and borderline) dropped pairs listed in the report", ge=0)

    def check(self) -> None:
        negative = {name: share for name, share in self.mix.items() if share < 0}
        if negative:
            raise ConfigError(f"mix shares must be >= 0, got {negative}")
        if abs(sum(self.mix.values()) - 1.0) > 1e-6:
            raise ConfigError(f"mix shares must sum to 1, got {sum(self.mix.values()):.4f}")
        if self.min_chars >= self.max_chars:
            raise ConfigError(f"min_chars ({self.min_chars}) must be < max_chars ({self.max_chars})")
        for i, source in enumerate(self.sources):
            _check_source(source, f"sources[{i}]", self.mix)
        if self.fact_verifier == "kb" and not self.facts_file:
            raise ConfigError("facts_file must be set when fact_verifier is 'kb'")


CURATE_SOURCE_KEYS = ("path", "category", "limit")  # limit: read at most this many records (optional)


def _check_source(source: dict, where: str, mix: dict[str, float]) -> None:
    unknown = set(source) - set(CURATE_SOURCE_KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {list(CURATE_SOURCE_KEYS)}")
    if not isinstance(source.get("path"), str):
        raise ConfigError(f"{where}.path must be a file or folder path, got {source.get('path')!r}")
    if source.get("category") not in mix:
        raise ConfigError(f"{where}.category must be one of {sorted(mix)}, got {source.get('category')!r}")
    limit = source.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"{where}.limit must be a positive integer, got {limit!r}")
