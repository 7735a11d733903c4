"""Records (jobs/records.py schema) ↔ the flat rows the curation pipeline carries.

A row holds the record as JSON text next to a few scalar columns. Records differ in their optional fields
(ratings, chosen/rejected), and Arrow infers a schema per block; one text column cannot disagree with
itself across blocks, so the pipeline never trips over a record that happens to carry ratings.
"""

from __future__ import annotations

import hashlib
import json

from common.errors import RecordError, SourceError
from common.records import last_response

# seq = source index * SEQ_STRIDE + position in the source: one global order that follows the config's
# source order, so the diversity filter's "first one wins" is reproducible however Ray schedules blocks.
SEQ_STRIDE = 1_000_000_000
# error: why the row is bad input ("" for a record that was read); unreadable: the row stands for a whole
# source that could not be read, not for one malformed record of it. ratings: the record's (annotator, rating)
# pairs as JSON text ("" unrated), so the driver's agreement report reads them without parsing every record.
ROW_COLUMNS = ("id", "seq", "category", "source", "record", "response_chars", "error", "unreadable", "ratings")


def as_sft(record: dict) -> dict:
    """A preference record becomes a chat that ends with its chosen reply: SFT learns the preferred answer."""
    if "chosen" not in record:
        return record
    sft = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    sft["messages"] = [*record["messages"], {"role": "assistant", "content": record["chosen"]}]
    return sft


def record_id(record: dict) -> str:
    """Content hash of the conversation: stable across runs and file moves, so reviewers' verdicts on
    one run still find their records in the next."""
    canonical = json.dumps(record["messages"], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def to_row(record: dict, category: str, seq: int) -> dict:
    record = dict(as_sft(record), category=category)
    return {"id": record_id(record), "seq": seq, "category": category, "source": record["source"],
            "record": json.dumps(record, ensure_ascii=False), "response_chars": len(last_response(record)),
            "error": "", "unreadable": False, "ratings": rating_pairs(record)}


def rating_pairs(record: dict) -> str:
    """[[annotator id or null, rating], ...] as JSON text; "" when the record carries no ratings."""
    ratings = record.get("ratings")
    if not ratings:
        return ""
    annotators = record.get("annotators") or [None] * len(ratings)
    return json.dumps([list(pair) for pair in zip(annotators, ratings)], ensure_ascii=False)


def ratings_of(row: dict) -> list[tuple[str | None, float]]:
    return [(annotator, rating) for annotator, rating in json.loads(row["ratings"])] if row["ratings"] else []


def error_row(error: RecordError, category: str, seq: int) -> dict:
    """A malformed record, or a source that cannot be read at all, travels as a row naming file:line and the
    reason: it is skipped, counted and listed in the report, while the rest of the job goes on."""
    return {"id": "", "seq": seq, "category": category, "source": error.where, "record": "", "response_chars": 0,
            "error": error.reason, "unreadable": isinstance(error, SourceError), "ratings": ""}


def record_of(row: dict) -> dict:
    return json.loads(row["record"])


def assistant_text(record: dict) -> str:
    """What the model is trained to say. Harmful *requests* in user turns are exactly the edge cases SFT
    needs (with a refusal as the reply), so screening looks at assistant turns only."""
    return "\n".join(m["content"] for m in record["messages"] if m["role"] == "assistant")


def embedding_text(record: dict) -> str:
    """The conversation without its system turns; the encoder truncates it (curate.embed_max_tokens), so openings
    decide. A system prompt is shared by whole sources (a persona, house rules): embedded first, one of 128 word
    pieces or more made every record of such a source the same vector, and all but one were dropped as
    near-duplicates."""
    return "\n".join(m["content"] for m in record["messages"] if m["role"] != "system")
