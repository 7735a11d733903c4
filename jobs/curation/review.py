"""Human review: the seeded spot-check sample, and reviewers' verdicts fed back into the next run.

spot_check.jsonl and review_queue.jsonl rows carry `"verdict": null`. A reviewer fills in "accept" or
"reject" (rows left null are unreviewed) and passes the edited file back as curate.review_verdicts: the
next run drops rejected records and keeps accepted ones out of the review queue.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.errors import RecordError

VERDICTS = ("accept", "reject")


def spot_check_sample(ids: list[str], fraction: float, seed: int) -> list[str]:
    """round(fraction * n) ids, chosen by a seeded hash of each id rather than by position: the same seed
    picks the same records whatever else the set holds, so a rerun mostly re-picks what was reviewed."""
    count = round(len(ids) * fraction)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    chosen = set(ranked[:count])
    return [i for i in ids if i in chosen]


def read_verdicts(path: Path) -> dict[str, str]:
    """{record id or source: "accept" | "reject"} from a JSONL of {id or source, verdict} rows."""
    if not path.is_file():
        raise RecordError(f"{path}: reviewer verdicts file does not exist")
    verdicts: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            key, verdict = _parse_verdict(line, f"{path}:{lineno}")
            if verdict is not None:
                verdicts[key] = verdict
    return verdicts


def _parse_verdict(line: str, where: str) -> tuple[str, str | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
    key = row.get("id") or row.get("source")
    if not isinstance(key, str):
        raise RecordError(f"{where}: a verdict needs the record's 'id' (or 'source')")
    verdict = row.get("verdict")
    if verdict is not None and verdict not in VERDICTS:
        raise RecordError(f"{where}: verdict must be one of {list(VERDICTS)} or null, got {verdict!r}")
    return key, verdict
