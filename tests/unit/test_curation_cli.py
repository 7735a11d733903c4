"""`python -m jobs.curate`: help text, config errors, and unreadable sources reported by file and line."""

from __future__ import annotations

import json

import pytest

from jobs import cli
from jobs.curate import main
from jobs.curation.pipeline import _raise_read_errors, read_source
from jobs.records import RecordError


def test_help_explains_flags_and_lists_every_curate_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--config", "--address", "--print-config", "curate.sources", "curate.max_similarity",
                   "curate.review_verdicts", "curate.embed_max_tokens", "spot_check.jsonl"):
        assert needle in text


@pytest.mark.parametrize("overrides, message", [
    (["curate.sources=[{path: a.jsonl, category: gossip}]"], "curate.sources[0].category must be one of"),
    (["curate.max_similarity=1.5"], "curate.max_similarity must be <= 1.0"),
    (["curate.fact_verifier=kb"], "curate.facts_file must be set"),
    ([], "curate.sources is empty"),
])
def test_config_errors_are_one_line_and_exit_2(capsys, overrides, message):
    assert cli.run_main("jobs.curate", main, overrides) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_unreadable_source_becomes_an_error_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "hi", "output": "hello there"}) + "\n{broken\n")
    sources = [{"path": str(bad), "category": "general"}]
    rows = read_source({"index": 0}, sources)
    assert len(rows) == 1 and rows[0]["error"].startswith(f"{bad}:2: invalid JSON")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: invalid JSON"):
        _raise_read_errors([dict(rows[0], status="error")])


def test_sources_become_rows_in_one_global_order(tmp_path):
    data = tmp_path / "ok.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"answer {i}"}) + "\n" for i in range(3)))
    rows = read_source({"index": 2}, [{}, {}, {"path": str(data), "category": "edge", "limit": 2}])
    assert [r["seq"] for r in rows] == [2_000_000_000, 2_000_000_001]
    assert {r["category"] for r in rows} == {"edge"} and rows[0]["response_chars"] == len("answer 0")
