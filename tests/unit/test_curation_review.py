"""Human spot-check sample and reviewer feedback (jobs/curation/review.py)."""

from __future__ import annotations

import json

import pytest

from common.errors import RecordError
from jobs.curation.review import read_verdicts, spot_check_sample
from jobs.curation.rules import ReviewerRule, evaluate

IDS = [f"id{i:03d}" for i in range(100)]


def test_spot_check_is_30_percent_seeded_and_in_input_order():
    sample = spot_check_sample(IDS, 0.30, seed=42)
    assert len(sample) == 30
    assert sample == spot_check_sample(IDS, 0.30, seed=42)
    assert sample != spot_check_sample(IDS, 0.30, seed=7)
    assert sample == [i for i in IDS if i in set(sample)]


def test_spot_check_picks_the_same_records_when_the_set_changes():
    """A record's chance depends on its id and the seed only, so a rerun re-picks what was reviewed."""
    first = set(spot_check_sample(IDS, 0.30, seed=42))
    grown = set(spot_check_sample(IDS + [f"new{i}" for i in range(10)], 0.30, seed=42))
    assert len(first & grown) >= 27


def test_verdicts_file_round_trip_and_feedback(tmp_path):
    path = tmp_path / "spot_check.jsonl"
    rows = [{"id": "a", "verdict": "reject"}, {"id": "b", "verdict": "accept"}, {"id": "c", "verdict": None},
            {"source": "data.jsonl:7", "verdict": "reject"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    verdicts = read_verdicts(path)
    assert verdicts == {"a": "reject", "b": "accept", "data.jsonl:7": "reject"}  # unreviewed rows are ignored
    rule = ReviewerRule(verdicts)
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "an answer"}]}
    assert evaluate(dict(record, id="a", source="x:1"), [rule]).status == "drop"
    assert evaluate(dict(record, id="z", source="data.jsonl:7"), [rule]).status == "drop"
    assert evaluate(dict(record, id="c", source="x:3"), [rule]).status == "keep"


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "verdict": "maybe"}', "verdict must be one of"),
    ('{"verdict": "reject"}', "needs the record's 'id'"),
    ("{not json", "invalid JSON"),
])
def test_bad_verdict_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "verdicts.jsonl"
    path.write_text('{"id": "ok", "verdict": "accept"}\n' + line + "\n")
    with pytest.raises(RecordError, match=rf"verdicts.jsonl:2: .*{message}"):
        read_verdicts(path)
