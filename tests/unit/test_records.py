"""Every data format in ../shared/data normalises to one schema; bad rows are named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.records import RecordError, last_response, normalise, prompt_of, read_records

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.parametrize("relative, count, kind", [
    ("sft/llms-from-scratch/instruction-data.json", 1100, "sft"),
    ("sft/self-instruct/seed_tasks.jsonl", 175, "sft"),
    ("multiturn/fastchat/dummy_conversation.json", 500, "sft"),
    ("multiturn/kdconv/film_test.json", 150, "sft"),
    ("multiturn/oasst-threads/derived_longest_threads.jsonl", 100, "sft"),
    ("preference/hh-rlhf-harmless/pairs.jsonl", 1800, "pref"),
    ("preference/oasst-pairs/derived_ranked_pairs.jsonl", 212, "pref"),
    ("preference/llamafactory-dpo/dpo_zh_demo.json", 300, "pref"),
    ("preference/llms-from-scratch/instruction-data-with-preference.json", 1100, "pref"),
])
def test_shared_data_reads(relative, count, kind):
    records = list(read_records(DATA / relative))
    assert len(records) == count
    for record in records:
        assert all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                   for m in record["messages"])
        assert ("chosen" in record) == (kind == "pref")
        assert record["source"].startswith(str(DATA / relative))


def test_alpaca_input_joins_instruction():
    [record] = normalise({"instruction": "Translate.", "input": "hola", "output": "hello"}, "f:1")
    assert record["messages"] == [{"role": "user", "content": "Translate.\n\nhola"},
                                  {"role": "assistant", "content": "hello"}]
    assert last_response(record) == "hello"
    assert prompt_of(record) == record["messages"][:1]


def test_sharegpt_and_kdconv_roles():
    [share] = normalise({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "f:1")
    assert [m["role"] for m in share["messages"]] == ["user", "assistant"]
    [kd] = normalise({"messages": [{"message": "看过吗？"}, {"message": "是的"}, {"message": "好"}]}, "f:2")
    assert [m["role"] for m in kd["messages"]] == ["user", "assistant", "user"]


def test_hh_transcript_splits_prompt_and_replies():
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine",
           "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: go away"}
    [record] = normalise(row, "f:1")
    assert record["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": "how?"}]
    assert (record["chosen"], record["rejected"]) == ("fine", "go away")


def test_ratings_and_category_are_kept():
    [record] = normalise({"prompt": "q", "response": "a", "ratings": [4, 5, 3], "category": "domain"}, "f:1")
    assert record["ratings"] == [4.0, 5.0, 3.0] and record["category"] == "domain"


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n\n{not json\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:3: invalid JSON"):
        list(read_records(path))


def test_unknown_format_and_bad_turn_are_named(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(RecordError, match=r"odd.jsonl:1: unrecognised record format with keys \['question'\]"):
        list(read_records(path))
    with pytest.raises(RecordError, match="f:9: unknown role 'robot'"):
        normalise({"messages": [{"role": "robot", "content": "x"}]}, "f:9")
    with pytest.raises(RecordError, match="field 'output' must be text"):
        normalise({"instruction": "x", "output": 3}, "f:1")


def test_missing_file_and_parquet_round_trip(tmp_path):
    with pytest.raises(RecordError, match="no such data file"):
        list(read_records(tmp_path / "nope.jsonl"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "response": "a"}]), tmp_path / "d.parquet")
    [record] = read_records(tmp_path / "d.parquet")
    assert record["messages"][-1] == {"role": "assistant", "content": "a"}
