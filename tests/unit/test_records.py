"""Every data format in ../shared/data normalises to one schema; bad rows are named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import NotAPair, RecordError, SourceError
from common.records import (JSON_COLUMNS_KEY, _parquet_rows, last_response, normalise, prompt_of, read_many,
                            read_records, write_parquet)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.mark.parametrize("relative, count, kind", [
    ("sft/llms-from-scratch/instruction-data.json", 1100, "sft"),
    ("sft/self-instruct/seed_tasks.jsonl", 175, "sft"),
    ("multiturn/fastchat/dummy_conversation.json", 500, "sft"),
    ("multiturn/kdconv/film_test.json", 150, "sft"),
    ("multiturn/oasst-threads/derived_longest_threads.jsonl", 100, "sft"),
    ("preference/hh-rlhf-harmless/pairs.jsonl", 1795, "pref"),  # of 1,800 rows: 5 are no pair (below)
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
    # A chat that ends on a question is that question to answer, earlier answers included.
    open_question = {"messages": record["messages"] + [{"role": "user", "content": "And in French?"}]}
    assert prompt_of(open_question) == open_question["messages"]


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
    # Without the leading blank lines the first turn was split off as a preamble: the pair lost its prompt.
    [bare] = normalise({key: value.lstrip("\n") for key, value in row.items()}, "f:2")
    assert bare["messages"] == record["messages"] and bare["chosen"] == "fine"


HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine"


def _hh_pairs_file(tmp_path):
    """Line 1 a pair; line 2 the same pair written with the spacing the parser strips; lines 3 and 4 rows whose
    rejected reply answers another conversation (a shorter one, as in HH-RLHF's own such rows; a different
    question)."""
    rows = [{"chosen": HH_CHOSEN, "rejected": HH_CHOSEN.replace("fine", "go away")},
            {"chosen": HH_CHOSEN, "rejected": "Human: hi \n\nAssistant:  hello\n\nHuman: how?\n\nAssistant: no"},
            {"chosen": HH_CHOSEN, "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
            {"chosen": HH_CHOSEN, "rejected": HH_CHOSEN.replace("how?", "why?").replace("fine", "go away")}]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


HH_NOT_A_PAIR = "chosen and rejected transcripts differ before their last Assistant reply: the replies answer " \
                "different conversations, so they are not a preference pair"


def test_hh_replies_to_different_conversations_are_no_pair():
    with pytest.raises(NotAPair) as info:
        normalise({"chosen": HH_CHOSEN, "rejected": "\n\nHuman: hi\n\nAssistant: go away"}, "f:3")
    assert (info.value.where, info.value.reason) == ("f:3", HH_NOT_A_PAIR)
    assert isinstance(info.value, RecordError)  # lenient readers (curation) list it with the other bad rows


def test_strict_reading_skips_hh_rows_that_are_no_pair_and_names_them(tmp_path, caplog):
    path = _hh_pairs_file(tmp_path)
    records = read_many([path])
    assert [(r["source"], r["chosen"], r["rejected"]) for r in records] == [
        (f"{path}:1", "fine", "go away"), (f"{path}:2", "fine", "no")]
    assert records[1]["messages"] == records[0]["messages"]
    assert f"{path}: skipped 2 preference rows whose chosen and rejected transcripts differ before their last " \
           f"reply (the replies answer different conversations: no pair): {path}:3, {path}:4" in caplog.text


def test_the_warning_names_the_first_ten_skipped_rows_and_counts_them_all(tmp_path, caplog):
    path = tmp_path / "hh.jsonl"
    path.write_text(12 * (json.dumps({"chosen": HH_CHOSEN, "rejected": "\n\nHuman: hi\n\nAssistant: no"}) + "\n"))
    assert read_many([path]) == []
    named = ", ".join(f"{path}:{line}" for line in range(1, 11))
    assert f"{path}: skipped 12 preference rows" in caplog.text and f"{named} and 2 more" in caplog.text


def test_lenient_reading_reports_hh_rows_that_are_no_pair(tmp_path):
    path = _hh_pairs_file(tmp_path)
    errors = []
    assert len(list(read_records(path, on_error=errors.append))) == 2
    assert [(e.where, e.reason) for e in errors] == [(f"{path}:3", HH_NOT_A_PAIR), (f"{path}:4", HH_NOT_A_PAIR)]


def test_the_shared_hh_file_loses_only_its_five_rows_that_are_no_pair(caplog):
    """Anthropic's harmless-base test split: in each of these rows one transcript runs on past a turn it glued
    to a reply ("...reply.  Human: ..."), so the two last replies answer different conversations."""
    path = DATA / "preference/hh-rlhf-harmless/pairs.jsonl"
    assert len(read_many([path])) == 1795
    assert f"{path}: skipped 5 preference rows" in caplog.text
    assert ", ".join(f"{path}:{line}" for line in (1036, 1076, 1328, 1445, 1634)) in caplog.text


def test_ratings_and_category_are_kept():
    [record] = normalise({"prompt": "q", "response": "a", "ratings": [4, 5, 3], "category": "domain"}, "f:1")
    assert record["ratings"] == [4.0, 5.0, 3.0] and record["category"] == "domain"


@pytest.mark.parametrize("field, ratings", [
    ("ratings", [{"annotator": "a1", "rating": 4}, {"annotator": "a2", "rating": 5}]),
    ("annotator_ratings", [{"annotator": "a1", "rating": 4, "seconds": 30}, {"annotator": "a2", "rating": "5"}]),
    ("ratings", {"a1": 4, "a2": 5}),
])
def test_ratings_with_annotator_ids_keep_them_in_a_parallel_list(field, ratings):
    [record] = normalise({"prompt": "q", "response": "a", field: ratings}, "f:1")
    assert (record["ratings"], record["annotators"]) == ([4.0, 5.0], ["a1", "a2"])
    assert "columns" not in record


def test_plain_ratings_stay_anonymous_unless_the_row_names_them():
    [plain] = normalise({"prompt": "q", "response": "a", "annotator_ratings": [4, 5]}, "f:1")
    assert plain["ratings"] == [4.0, 5.0] and "annotators" not in plain
    # how a curated record is written back out: numbers plus the parallel ids; integer ids become text
    [named] = normalise({"prompt": "q", "response": "a", "ratings": [4, 5], "annotators": ["a1", 7]}, "f:1")
    assert (named["ratings"], named["annotators"]) == ([4.0, 5.0], ["a1", "7"])


@pytest.mark.parametrize("extra, reason", [
    ({"ratings": [{"annotator": "a1", "rating": 4}, {"annotator": "a1", "rating": 5}]},
     "ratings: annotator 'a1' rated this record more than once"),
    ({"ratings": [4, 5], "annotators": ["a1", "a1"]}, "ratings: annotator 'a1' rated this record more than once"),
    ({"ratings": [{"annotator": "a1", "rating": 4}, 5]},
     'ratings[1] must be an {"annotator": id, "rating": number} object like the rest of the list, got 5'),
    ({"annotator_ratings": [{"who": "a1", "rating": 4}]},
     'annotator_ratings[0] must be an {"annotator": id, "rating": number} object like the rest of the list, '
     "got {'who': 'a1', 'rating': 4}"),
    ({"ratings": [{"annotator": "", "rating": 4}]}, "ratings: an annotator id must be non-empty text or an "
                                                    "integer, got ''"),
    ({"ratings": [{"annotator": None, "rating": 4}]}, "ratings: an annotator id must be non-empty text or an "
                                                      "integer, got None"),
    ({"ratings": {"a1": "good"}}, "ratings must be numbers, got {'a1': 'good'}"),
    ({"ratings": [4, float("nan")]}, "ratings must be numbers, got [4, nan]"),
    ({"ratings": [4, True]}, "ratings must be numbers, got [4, True]"),
    ({"ratings": [4, 5], "annotators": ["a1"]},
     "field 'annotators' must be a list of 2 annotator ids, one per rating in 'ratings', got ['a1']"),
])
def test_bad_ratings_are_record_errors_naming_the_field(extra, reason):
    with pytest.raises(RecordError) as info:
        normalise({"prompt": "q", "response": "a", **extra}, "f:7")
    assert (info.value.where, info.value.reason) == ("f:7", reason)


def test_a_bad_rating_names_file_line_and_field(tmp_path):
    path = tmp_path / "rated.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a", "ratings": {"a1": 4}}) + "\n" +
                    json.dumps({"prompt": "q", "response": "a", "annotator_ratings": [{"annotator": "a1"}]}) + "\n")
    with pytest.raises(RecordError, match=rf"^{path}:2: annotator_ratings\[0\] must be an "):
        read_many([path])


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


def test_parquet_of_mixed_extra_fields_round_trips():
    """Fields that sources type differently, or an empty object, cannot share an Arrow type: written as JSON text
    (named in the metadata) instead of failing the whole write, and read back as they were."""
    import tempfile

    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "q"}], "columns": {"ref": 1, "meta": {}}, "n": 1},
            {"messages": [{"role": "user", "content": "r"}], "columns": {"ref": "x"}, "n": 2, "later": [1.0]}]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixed.parquet"
        write_parquet(path, rows)
        assert json.loads(pq.read_schema(path).metadata[JSON_COLUMNS_KEY]) == ["columns"]
        read = [row for _, row in _parquet_rows(path)]
    assert read == [dict(rows[0], later=None), rows[1]]


def _mixed_file(tmp_path):
    """Five good rows around two bad ones: line 3 is not JSON, line 5 has no response."""
    path = tmp_path / "mixed.jsonl"
    good = [json.dumps({"instruction": f"q{i}", "output": f"answer {i}"}) for i in range(5)]
    path.write_text("\n".join([good[0], good[1], "{not json", good[2], json.dumps({"instruction": "q"}),
                               good[3], good[4]]) + "\n")
    return path


def test_lenient_reading_skips_bad_rows_and_names_each(tmp_path):
    path = _mixed_file(tmp_path)
    errors = []
    records = list(read_records(path, on_error=errors.append))
    assert [last_response(r) for r in records] == [f"answer {i}" for i in range(5)]
    assert [(e.where, e.reason) for e in errors] == [
        (f"{path}:3", "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (f"{path}:5", "missing field 'output'")]
    assert [r["source"] for r in records] == [f"{path}:{n}" for n in (1, 2, 4, 6, 7)]
    assert len(list(read_records(path, limit=3, on_error=errors.append))) == 3  # limit counts good records


def test_strict_reading_for_training_jobs_stops_at_the_first_bad_row(tmp_path):
    path = _mixed_file(tmp_path)
    with pytest.raises(RecordError, match=rf"^{path}:3: invalid JSON"):
        read_many([path])
    path.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n" + json.dumps({"instruction": "q"}) + "\n")
    with pytest.raises(RecordError, match=rf"^{path}:2: missing field 'output'$"):
        read_many([path])


def test_a_prompt_alone_is_a_record_to_answer_and_unread_fields_travel_as_columns():
    [record] = normalise({"prompt": "Tell me a story about a fox.", "animal": "fox", "id": 3}, "f:2")
    assert record == {"messages": [{"role": "user", "content": "Tell me a story about a fox."}], "source": "f:2",
                      "columns": {"animal": "fox", "id": 3}}
    [plain] = normalise({"instruction": "q", "output": "a"}, "f:3")
    assert "columns" not in plain  # every field was read


@pytest.mark.parametrize("row, reason", [
    ({"instruction": "q", "output": "a", "ratings": "high"}, "field 'ratings' must be a list of numbers, a list of "
     '{"annotator": id, "rating": number} objects or an {id: number} object, got str'),
    ({"instruction": "q", "output": "a", "ratings": [4, "x"]}, "ratings must be numbers, got [4, 'x']"),
    ({"instruction": "q", "instances": {"output": "a"}}, "field 'instances' must be a list, got dict"),
    ({"instruction": "q", "instances": ["a"]}, "every item of 'instances' must be an object"),
    ({"instruction": 7, "instances": [{"output": "a"}]}, "field 'instruction' must be text, got int"),
    ({"messages": [{"message": "hi"}, "hello"]}, "a turn must be an object, got str"),
    ({"prompt": "q", "response": 7}, "field 'response' must be text, got int"),
])
def test_wrong_types_are_record_errors_not_crashes(row, reason):
    with pytest.raises(RecordError) as info:
        normalise(row, "f:4")
    assert (info.value.where, info.value.reason) == ("f:4", reason)


def test_an_unreadable_source_is_one_source_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "list.json").write_text("{oops")
    for path, message in ((tmp_path / "nope.jsonl", "no such data file or folder"),
                          (tmp_path / "notes.txt", "unsupported data file type '.txt'"),
                          (tmp_path / "list.json", "invalid JSON")):
        with pytest.raises(SourceError, match=message):
            list(read_records(path))
        errors = []
        assert list(read_records(path, on_error=errors.append)) == []
        assert len(errors) == 1 and isinstance(errors[0], SourceError) and message in errors[0].reason


def test_a_folder_keeps_reading_past_one_unreadable_file(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2")
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    errors = []
    [record] = read_records(tmp_path, on_error=errors.append)
    assert record["source"] == f"{tmp_path / 'b.jsonl'}:1" and errors[0].where == f"{tmp_path / 'a.json'}:1"
    with pytest.raises(SourceError, match=r"a.json:1: invalid JSON"):
        list(read_records(tmp_path))


@pytest.mark.parametrize("curated_files", [("curated.jsonl", "curated.parquet"), ("curated.parquet",)])
def test_a_curate_output_folder_reads_its_curated_records_once(tmp_path, curated_files):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                "category": "general", "id": f"id{i}"} for i in range(3)]
    for name in curated_files:
        if name.endswith(".jsonl"):
            (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            pq.write_table(pa.Table.from_pylist(records), tmp_path / name)
    (tmp_path / "report.json").write_text(json.dumps({"accounting": {"curated": 3}, "mix": [1, 2]}))
    for name in ("review_queue.jsonl", "spot_check.jsonl"):
        (tmp_path / name).write_text(json.dumps({"id": "x", "verdict": None}) + "\n")
    read = read_many([tmp_path])
    assert [last_response(r) for r in read] == ["a0", "a1", "a2"]
    assert {r["source"].rsplit(":", 1)[0] for r in read} == {str(tmp_path / curated_files[0])}


def test_a_saved_datasets_folder_reads_like_its_rows(tmp_path):
    import datasets

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows[:1]),
                          "train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "splits"))
    plain = read_records(tmp_path / "plain")
    assert [r["messages"][-1]["content"] for r in plain] == ["a0", "a1", "a2"]
    assert [r["messages"][0]["content"] for r in read_records(tmp_path / "splits")] == ["q0", "q1", "q2"]  # train


def test_a_curated_set_of_chats_and_pairs_reads_back_as_it_was_written(tmp_path):
    """Parquet holds the union of the rows' fields, so a chat reads back with chosen=None: that is no field, not a
    pair without a reply. A record's extras stay one level deep, where reward functions look for `answer`."""
    rows = [{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
             "columns": {"answer": "4", "source": "a.jsonl:1"}, "id": "x1"},
            {"messages": [{"role": "user", "content": "Be rude."}], "chosen": "No.", "rejected": "Fine, idiot."}]
    path = tmp_path / "curated.parquet"
    write_parquet(path, rows)
    chat, pair = read_records(path)
    assert chat["messages"][-1]["content"] == "4" and "chosen" not in chat
    assert chat["columns"] == {"answer": "4", "source": "a.jsonl:1", "id": "x1"}
    assert pair["chosen"] == "No." and pair["rejected"] == "Fine, idiot."
    [empty] = normalise({"messages": chat["messages"], "columns": {}}, "c:3")  # nothing nested either way
    assert "columns" not in empty.get("columns", {})
