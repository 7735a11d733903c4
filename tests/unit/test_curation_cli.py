"""`python -m jobs.curate`: help text, config errors, and bad input turned into rows naming file and line."""

from __future__ import annotations

import json

import pytest

from jobs import cli
from jobs.curate import main
from jobs.curation.pipeline import read_source


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


def test_bad_records_become_error_rows_and_the_rest_of_the_source_is_read(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"instruction": "hi", "output": "hello there"})
    bad.write_text("\n".join([good, "{broken", good, json.dumps({"instruction": "no reply"}), good]) + "\n")
    rows = read_source({"index": 1}, [{}, {"path": str(bad), "category": "general"}])
    assert [(r["source"], r["error"], r["unreadable"]) for r in rows if r["error"]] == [
        (f"{bad}:2", "invalid JSON (Expecting property name enclosed in double quotes at column 2)", False),
        (f"{bad}:4", "missing field 'output'", False)]
    assert [r["source"] for r in rows if not r["error"]] == [f"{bad}:1", f"{bad}:3", f"{bad}:5"]
    assert [r["seq"] for r in rows] == [1_000_000_000 + i for i in range(5)]
    assert {r["category"] for r in rows} == {"general"}


def test_a_source_that_cannot_be_read_is_one_error_row_naming_its_path(tmp_path):
    missing = tmp_path / "missing.jsonl"
    [row] = read_source({"index": 0}, [{"path": str(missing), "category": "edge"}])
    assert (row["source"], row["error"], row["unreadable"]) == (str(missing), "no such data file or folder", True)


def test_sources_become_rows_in_one_global_order(tmp_path):
    data = tmp_path / "ok.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"answer {i}"}) + "\n" for i in range(3)))
    rows = read_source({"index": 2}, [{}, {}, {"path": str(data), "category": "edge", "limit": 2}])
    assert [r["seq"] for r in rows] == [2_000_000_000, 2_000_000_001]
    assert {r["category"] for r in rows} == {"edge"} and rows[0]["response_chars"] == len("answer 0")
