"""The curation job end to end on configs/curate-tiny.yaml with a real local Ray cluster and the real
all-MiniLM-L6-v2 encoder: outputs exist, load with `datasets` and jobs.records, and the counts add up; bad
input (two malformed lines of a source, a missing source) is listed in the report while the rest is curated."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from common.config import load_config
from common.records import read_records
from jobs.curation import pipeline

pytestmark = pytest.mark.ray

TINY = Path(__file__).resolve().parents[2] / "configs" / "curate-tiny.yaml"


@pytest.fixture(scope="module")
def bad_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    mixed = folder / "mixed.jsonl"
    mixed.write_text("\n".join([json.dumps({"instruction": "Name a primary colour.", "output": "Blue is one."}),
                                "{not json", json.dumps({"instruction": "Say hello."})]) + "\n")
    return mixed, folder / "missing.jsonl"


@pytest.fixture(scope="module")
def curated(ray_session, tmp_path_factory, bad_sources):
    cfg = load_config(TINY, [f"run.output_root={tmp_path_factory.mktemp('curate')}"])
    extra = [{"path": str(path), "category": "edge"} for path in bad_sources]
    return pipeline.run(replace(cfg, curate=replace(cfg.curate, sources=[*cfg.curate.sources, *extra])))


def test_outputs_exist_and_load(curated):
    import datasets

    out = curated.output_dir
    for name in ("curated.jsonl", "curated.parquet", "review_queue.jsonl", "spot_check.jsonl", "report.json",
                 "report.md", "lengths.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    records = list(read_records(out / "curated.jsonl"))
    assert len(records) == curated.report["accounting"]["curated"] > 0
    for kind, name in (("json", "curated.jsonl"), ("parquet", "curated.parquet")):
        assert len(datasets.load_dataset(kind, data_files=str(out / name), split="train")) == len(records)


def test_counts_add_up(curated):
    report = json.loads((curated.output_dir / "report.json").read_text())
    acc = report["accounting"]
    assert acc["input"] == sum(v for k, v in acc.items() if k != "input")
    assert acc["input"] == sum(report["input"]["by_category"].values())
    assert acc["dropped_by_rules"] == sum(rule["dropped"] for rule in report["rules"].values())
    assert acc["review_queue"] <= sum(rule["review"] for rule in report["rules"].values())
    div = report["diversity"]
    assert div["candidates"] == div["kept"] + div["dropped"] and div["dropped"] > 0
    by_source = report["accounting_by_source"]  # jobs.funnel follows one file through it
    assert set(by_source) == set(report["input"]["by_source"])
    for key, total in (("input", acc["input"]), ("dropped_by_diversity", div["dropped"]),
                       ("curated", acc["curated"]), ("spot_checked", report["spot_check"]["sampled"])):
        assert sum(source[key] for source in by_source.values()) == total, key
    assert div["closest_pairs"][0]["similarity"] >= div["threshold"]
    mix = report["mix"]
    assert mix["achieved_size"] == acc["curated"] == sum(c["achieved"] for c in mix["categories"].values())
    assert acc["left_out_by_mix"] == div["kept"] - acc["curated"]


def test_review_queue_and_spot_check(curated):
    out = curated.output_dir
    queue = [json.loads(line) for line in (out / "review_queue.jsonl").read_text().splitlines()]
    assert queue and all(row["verdict"] is None and row["rules"] for row in queue)
    spot = [json.loads(line) for line in (out / "spot_check.jsonl").read_text().splitlines()]
    assert len(spot) == round(0.3 * curated.report["accounting"]["curated"])
    curated_ids = {json.loads(line)["id"] for line in (out / "curated.jsonl").read_text().splitlines()}
    assert {row["id"] for row in spot} <= curated_ids


def test_bad_input_is_listed_and_the_rest_of_its_source_read(curated, bad_sources):
    mixed, missing = bad_sources
    bad = curated.report["bad_input"]
    assert [(e["where"], e["reason"]) for e in bad["entries"]] == [
        (f"{mixed}:2", "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (f"{mixed}:3", "missing field 'output'"), (str(missing), "no such data file or folder")]
    assert (bad["malformed_records"], bad["unreadable_sources"]) == (2, 1)
    assert curated.report["accounting"]["malformed"] == 2
    assert curated.report["input"]["by_source"][str(mixed)] == 3  # the good line was read alongside
    markdown = (curated.output_dir / "report.md").read_text()
    assert f"| {mixed}:3 | malformed record | missing field 'output' |" in markdown


ALL = TINY.parent / "curate-all.yaml"


def records_in(path: str) -> int:
    """Records in a source file counted without the job's readers: a JSON array's items or a JSONL's lines."""
    file = (TINY.parents[1] / path).resolve()
    if file.suffix == ".jsonl":
        return sum(1 for line in file.read_text(encoding="utf-8").splitlines() if line.strip())
    return len(json.loads(file.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_whole_job_on_every_sft_and_multiturn_file(ray_session, tmp_path):
    """Issue 4's scale check: all 2,518 records of ../shared/data/sft and multiturn through the real job."""
    cfg = load_config(ALL, [f"run.output_root={tmp_path}"])
    result = pipeline.run(cfg)
    report = result.report
    by_source = report["input"]["by_source"]
    expected = {source["path"]: records_in(source["path"]) for source in cfg.curate.sources}
    assert sum(expected.values()) == 2518
    assert {Path(path).resolve(): n for path, n in by_source.items()} == \
        {(TINY.parents[1] / path).resolve(): n for path, n in expected.items()}
    acc = report["accounting"]
    assert acc["input"] == 2518 and report["bad_input"]["entries"] == []
    assert acc["input"] == sum(v for k, v in acc.items() if k != "input")
    assert acc["dropped_by_rules"] == sum(rule["dropped"] for rule in report["rules"].values())
    div = report["diversity"]
    assert div["candidates"] == div["kept"] + div["dropped"] and div["dropped"] > 0
    by_source = report["accounting_by_source"]  # jobs.funnel follows one file through it
    assert set(by_source) == set(report["input"]["by_source"])
    for key, total in (("input", acc["input"]), ("dropped_by_diversity", div["dropped"]),
                       ("curated", acc["curated"]), ("spot_checked", report["spot_check"]["sampled"])):
        assert sum(source[key] for source in by_source.values()) == total, key
    mix = report["mix"]
    categories = mix["categories"].values()
    assert mix["achieved_size"] == acc["curated"] == sum(c["achieved"] for c in categories)
    # No size target: the set is as large as the mix allows, so the scarcest category (measured: domain, 101
    # left after the gates and the filter) is used up and every share is on target to within one record.
    assert any(c["achieved"] == c["available"] for c in categories) and not mix["short_categories"]
    assert all(abs(c["achieved"] - c["target_share"] * acc["curated"]) <= 1 for c in categories)
    assert len(list(read_records(result.output_dir / "curated.jsonl"))) == acc["curated"] > 0
