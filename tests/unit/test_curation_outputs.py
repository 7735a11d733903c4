"""The driver half of the curation job without Ray (jobs/curation/pipeline.py): gates on plain batches,
then filter, mix, report and the atomic outputs, read back with jobs.records and `datasets`."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from actors.algo.agreement import krippendorff_alpha
from common.config import load_config
from common.errors import ConfigError, EmptyDatasetError
from common.records import read_records
from jobs.curation import pipeline
from jobs.curation.pipeline import Gathered, QualityGates, finish, read_source
from jobs.curation.rows import ROW_COLUMNS, to_row
from jobs.curation.rules import build_rules

ANSWERS = {  # category → replies; one near-duplicate pair and one record for each gate outcome
    "general": ["Paris is the capital of France.", "Water boils at 100 degrees Celsius at sea level.",
                "Paris is the capital of France.", "ok", "A triangle has three sides and three angles."],
    "domain": ["I am an assistant built by the rayalign team.", "我是由 rayalign 团队开发的助手。",
               "Shit, I really cannot tell you that."],
    "multi_turn": ["Sure, here is the second part of the plan.", "好的，我们下一步去故宫参观。"],
    "edge": ["I can't help with making weapons, but I can explain the law."],
}


def config(tmp_path, **curate):
    cfg = load_config(None, [f"run.output_root={tmp_path}", "run.name=t"])
    return replace(cfg, curate=replace(cfg.curate, **curate))


def gathered(cfg, answers=ANSWERS, read_rows=()) -> Gathered:
    """ANSWERS as gated rows, plus `read_rows` (rows as read_source makes them from real files)."""
    rows = []
    for category, replies in answers.items():
        for reply in replies:
            record = {"messages": [{"role": "user", "content": "question"}, {"role": "assistant", "content": reply}],
                      "source": f"{category}.jsonl:{len(rows) + 1}"}
            if category == "edge":  # the only edge record: the mix always selects it
                record["ratings"] = [5.0, 4.0, 5.0]
            rows.append(to_row(record, category, len(rows)))
    rows += read_rows
    batch = {column: np.array([row[column] for row in rows], dtype=object) for column in ROW_COLUMNS}
    gated = QualityGates(cfg.curate)(batch)
    rows = [{column: gated[column][i] for column in gated} for i in range(len(rows))]
    replies = sorted({json.loads(row["record"])["messages"][-1]["content"] for row in rows if row["record"]})
    for row in rows:  # stand-in embeddings: one direction per distinct reply, so duplicates coincide
        row["embedding"] = np.zeros(len(replies), dtype=np.float32)
        if row["record"]:
            row["embedding"][replies.index(json.loads(row["record"])["messages"][-1]["content"])] = 1.0
    summary = [{c: row[c] for c in pipeline.SUMMARY_COLUMNS} for row in rows]
    return Gathered(summary, [r for r in rows if r["status"] == "review"], [r for r in rows if r["status"] == "keep"])


def test_outputs_are_complete_readable_and_add_up(tmp_path):
    cfg = config(tmp_path)
    result = finish(cfg, build_rules(cfg.curate), gathered(cfg), {})
    out = result.output_dir
    assert out == tmp_path / "t" / "curate"
    assert sorted(p.name for p in out.iterdir()) == ["curated.jsonl", "curated.parquet", "lengths.png", "report.json",
                                                    "report.md", "review_queue.jsonl", "spot_check.jsonl"]
    report = json.loads((out / "report.json").read_text())
    acc = report["accounting"]
    assert acc["input"] == 11 and acc["dropped_by_rules"] == 1 and acc["review_queue"] == 1
    assert acc["dropped_by_diversity"] == 1  # the repeated "Paris is the capital of France."
    assert acc["input"] == sum(v for k, v in acc.items() if k != "input")
    assert report["rules"]["length"]["dropped"] == 1 and report["rules"]["lexicon"]["review"] == 1
    assert report["rules"]["annotator"]["noted"] == 10  # records without ratings pass, counted

    curated = list(read_records(out / "curated.jsonl"))
    assert len(curated) == acc["curated"] == report["mix"]["achieved_size"]
    from_folder = list(read_records(out))  # what jobs.sft reads when data.train_files names the folder
    assert [r["messages"] for r in from_folder] == [r["messages"] for r in curated]
    assert report["bad_input"] == {"malformed_records": 0, "unreadable_sources": 0, "listed": 0, "entries": []}
    assert {r["category"] for r in curated} <= set(ANSWERS)
    import datasets

    for kind, name in (("json", "curated.jsonl"), ("parquet", "curated.parquet")):
        ds = datasets.load_dataset(kind, data_files=str(out / name), split="train")
        assert len(ds) == len(curated) and ds[0]["messages"][0]["role"] == "user"
        assert sorted(r for r in ds["ratings"] if r) == [[5.0, 4.0, 5.0]]  # kept by both formats

    [queued] = [json.loads(line) for line in (out / "review_queue.jsonl").read_text().splitlines()]
    assert queued["rules"] == ["lexicon"] and queued["verdict"] is None and "shit" in queued["reasons"][0]
    spot = [json.loads(line) for line in (out / "spot_check.jsonl").read_text().splitlines()]
    assert len(spot) == round(0.3 * len(curated)) and all(row["verdict"] is None for row in spot)
    assert "## Mix: achieved vs target" in (out / "report.md").read_text()


def test_reviewer_rejections_drop_records_in_the_next_run(tmp_path):
    cfg = config(tmp_path)
    first = finish(cfg, build_rules(cfg.curate), gathered(cfg), {})
    spot = [json.loads(line) for line in (first.output_dir / "spot_check.jsonl").read_text().splitlines()]
    verdicts = tmp_path / "verdicts.jsonl"
    verdicts.write_text("".join(json.dumps(dict(row, verdict="reject")) + "\n" for row in spot))

    cfg2 = config(tmp_path, review_verdicts=str(verdicts), target_size=None)
    second = finish(cfg2, build_rules(cfg2.curate), gathered(cfg2), {})
    assert second.report["rules"]["reviewer"]["dropped"] == len(spot) > 0
    kept_ids = {r["id"] for r in map(json.loads, (second.output_dir / "curated.jsonl").read_text().splitlines())}
    assert kept_ids.isdisjoint(row["id"] for row in spot)


def test_a_failed_write_leaves_the_previous_outputs(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    first = finish(cfg, build_rules(cfg.curate), gathered(cfg), {})
    before = (first.output_dir / "curated.jsonl").read_text()

    def broken_plot(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "plot_lengths", broken_plot)
    with pytest.raises(OSError, match="disk full"):
        finish(cfg, build_rules(cfg.curate), gathered(cfg), {})
    assert (first.output_dir / "curated.jsonl").read_text() == before
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["curate"]  # no temporary folder left behind


def test_nothing_left_is_a_clear_error_and_writes_nothing(tmp_path):
    cfg = config(tmp_path, min_chars=1000)
    with pytest.raises(EmptyDatasetError, match="no record passed the quality gates"):
        finish(cfg, build_rules(cfg.curate), gathered(cfg), {})
    assert not (tmp_path / "t").exists()


def test_when_every_record_went_to_review_the_queue_is_still_written(tmp_path):
    """Review is then the only way on, so its queue must exist; the error says where it is."""
    cfg = config(tmp_path)
    only_review = gathered(cfg, answers={"domain": ["Shit, I really cannot tell you that."]})
    with pytest.raises(EmptyDatasetError, match=r"no record passed the quality gates: .*1 went to review: their "
                                                r"queue is .*review_queue.jsonl"):
        finish(cfg, build_rules(cfg.curate), only_review, {})
    queue = tmp_path / "t" / "curate" / "review_queue.jsonl"
    [queued] = [json.loads(line) for line in queue.read_text().splitlines()]
    assert queued["rules"] == ["lexicon"] and queued["verdict"] is None


def test_a_verdict_file_inside_the_folder_the_run_replaces_is_refused(tmp_path):
    cfg = config(tmp_path, review_verdicts=str(tmp_path / "t" / "curate" / "spot_check.jsonl"))
    with pytest.raises(ConfigError, match=r"curate.review_verdicts=.*spot_check.jsonl is inside the folder this run "
                                          r"replaces .*: copy it out of there first"):
        pipeline.check_verdicts_outside(cfg)
    pipeline.check_verdicts_outside(config(tmp_path, review_verdicts=str(tmp_path / "verdicts.jsonl")))


def _source_with_two_bad_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"instruction": "Name a primary colour.", "output": "Blue is a primary colour."}),
             "{not json",
             json.dumps({"instruction": "How many legs does a spider have?", "output": "A spider has eight legs."}),
             json.dumps({"instruction": "Say hello."}),  # a record missing its response
             json.dumps({"instruction": "What colour is grass?", "output": "Grass is usually green."})]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_input_is_skipped_counted_and_listed_while_the_rest_is_curated(tmp_path):
    mixed, missing = _source_with_two_bad_lines(tmp_path), tmp_path / "missing.jsonl"
    sources = [{"path": str(mixed), "category": "general"}, {"path": str(missing), "category": "domain"}]
    read_rows = [row for i in range(len(sources)) for row in read_source({"index": i}, sources)]
    cfg = config(tmp_path)
    result = finish(cfg, build_rules(cfg.curate), gathered(cfg, answers={}, read_rows=read_rows), {})
    report = json.loads((result.output_dir / "report.json").read_text())
    assert report["bad_input"] == {"malformed_records": 2, "unreadable_sources": 1, "listed": 3, "entries": [
        {"where": f"{mixed}:2", "kind": "malformed record",
         "reason": "invalid JSON (Expecting property name enclosed in double quotes at column 2)"},
        {"where": f"{mixed}:4", "kind": "malformed record",
         "reason": "missing field 'output'"},
        {"where": str(missing), "kind": "unreadable source", "reason": "no such data file or folder"}]}
    acc = report["accounting"]
    assert acc["malformed"] == 2 and acc["input"] == 5  # the unreadable source held no records to count
    assert acc["input"] == sum(v for k, v in acc.items() if k != "input")
    assert report["input"]["by_source"][str(mixed)] == 5
    assert report["response_chars"]["before"]["count"] == 3  # bad rows have no response to measure
    curated = [json.loads(line) for line in (result.output_dir / "curated.jsonl").read_text().splitlines()]
    assert sorted(r["source"] for r in curated) == [f"{mixed}:{n}" for n in (1, 3, 5)] and acc["curated"] == 3
    markdown = (result.output_dir / "report.md").read_text()
    assert "2 malformed records, 1 unreadable sources." in markdown
    assert f"| {mixed}:2 | malformed record | invalid JSON" in markdown
    assert f"| {mixed}:4 | malformed record | missing field 'output' |" in markdown


def test_nothing_readable_is_the_nothing_left_error_and_writes_nothing(tmp_path):
    mixed = tmp_path / "all_bad.jsonl"
    mixed.write_text("{not json\n" + json.dumps({"prompt": "q", "response": 7}) + "\n")
    sources = [{"path": str(mixed), "category": "general"}, {"path": str(tmp_path / "gone"), "category": "edge"}]
    read_rows = [row for i in range(len(sources)) for row in read_source({"index": i}, sources)]
    cfg = config(tmp_path)
    with pytest.raises(EmptyDatasetError, match=rf"nothing left to curate: .*2 malformed records, 1 unreadable "
                                                rf"sources; first: {mixed}:1: invalid JSON .*{mixed}:2: field "
                                                rf"'response' must be text, got int; {tmp_path / 'gone'}: no such "
                                                rf"data file"):
        finish(cfg, build_rules(cfg.curate), gathered(cfg, answers={}, read_rows=read_rows), {})
    assert not (tmp_path / "t").exists()


def _rated_sources(tmp_path):
    """Named ratings in every shape, anonymous ones, and a source rated once per record."""
    def row(question, answer, ratings):
        return json.dumps({"instruction": question, "output": answer, "ratings": ratings})

    rated = tmp_path / "rated.jsonl"
    rated.write_text("\n".join([
        row("Name a primary colour.", "Blue is a primary colour.",
            [{"annotator": "a1", "rating": 5}, {"annotator": "a2", "rating": 4}, {"annotator": "a3", "rating": 5}]),
        row("How many legs does a spider have?", "A spider has eight legs.", {"a1": 4, "a2": 5}),  # 2 annotators
        row("What colour is grass?", "Grass is usually green.", {"a1": 5, "a2": 5, "a3": 2}),  # they disagree
        row("What is two plus two?", "Two plus two is five.", [2, 2, 3]),  # mean 2.33: dropped
        row("Which planet is largest?", "Jupiter is the largest planet.", [4, 4, 4])]) + "\n")
    once = tmp_path / "once.jsonl"
    once.write_text(row("Say hello politely.", "Hello, nice to meet you.", [{"annotator": "b1", "rating": 5}]) + "\n")
    return rated, once


# The gates these records meet, without loading the lexicon (a second per build): keeps the tests fast.
ANNOTATION_RULES = ["reviewer", "annotator", "length", "unique_tokens", "repeated_span"]


def test_annotation_gate_review_queue_and_agreement_report(tmp_path):
    rated, once = _rated_sources(tmp_path)
    sources = [{"path": str(rated), "category": "general"}, {"path": str(once), "category": "general"}]
    read_rows = [row for i in range(len(sources)) for row in read_source({"index": i}, sources)]
    cfg = config(tmp_path, rules=ANNOTATION_RULES)
    result = finish(cfg, build_rules(cfg.curate), gathered(cfg, answers={}, read_rows=read_rows), {})
    out = result.output_dir
    report = json.loads((out / "report.json").read_text())

    queue = {row["source"]: row["reasons"] for row in map(json.loads, (out / "review_queue.jsonl").read_text()
                                                          .splitlines())}
    assert queue == {f"{rated}:2": ["2 annotators < curate.min_annotators 3"],
                     f"{rated}:3": ["ratings a1=5, a2=5, a3=2 differ by 3 > curate.max_rating_spread 2"],
                     f"{once}:1": ["1 annotators < curate.min_annotators 3"]}
    assert report["rules"]["annotator"] | {"threshold": ""} == {
        "threshold": "", "dropped": 1, "review": 3, "noted": 0, "note_meaning": "no ratings: passed"}

    # every read record is a unit, the dropped and queued ones too: α describes the annotation
    units = [[5, 4, 5], [4, 5], [5, 5, 2], [2, 2, 3], [4, 4, 4]]
    alpha = round(krippendorff_alpha(units).value, 4)
    assert report["annotation"] == {"metric": "interval", "sources": {
        str(rated): {"records_rated": 5, "annotators": 3, "anonymous_ratings": 6, "pairable_values": 14,
                     "alpha": alpha},
        str(once): {"records_rated": 1, "annotators": 1, "anonymous_ratings": 0, "pairable_values": 0, "alpha": None,
                    "why": "fewer than 2 pairable values (no unit has 2 ratings)"}},
        "overall": {"records_rated": 6, "annotators": 4, "anonymous_ratings": 6, "pairable_values": 14,
                    "alpha": alpha}}
    markdown = (out / "report.md").read_text()
    assert "## Annotator agreement (Krippendorff's α, interval)" in markdown
    assert f"| {rated} | 5 | 3 + 6 anonymous ratings | 14 | {alpha:.3f} |" in markdown
    assert f"| {once} | 1 | 1 | 0 | undefined: fewer than 2 pairable values (no unit has 2 ratings) |" in markdown

    for name in ("curated.jsonl", "curated.parquet"):  # annotator ids survive the round trip through the outputs
        curated = {r["columns"]["source"]: r for r in read_records(out / name)}  # where it was curated from
        assert curated[f"{rated}:1"]["annotators"] == ["a1", "a2", "a3"]
        assert curated[f"{rated}:1"]["ratings"] == [5.0, 4.0, 5.0]
        assert "annotators" not in curated[f"{rated}:5"]


def test_a_run_without_ratings_says_so_in_the_report(tmp_path):
    cfg = config(tmp_path, rules=ANNOTATION_RULES)
    report = finish(cfg, build_rules(cfg.curate), gathered(cfg, answers={"general": ANSWERS["general"]}), {}).report
    assert report["annotation"]["sources"] == {} and report["annotation"]["overall"]["alpha"] is None
    assert "No record carried ratings." in (cfg.run.output_dir("curate") / "report.md").read_text()
