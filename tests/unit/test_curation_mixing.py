"""Category mixing (jobs/curation/mixing.py): the arithmetic, short categories, seeded sampling."""

from __future__ import annotations

import pytest

from jobs.curation.mixing import apportion, plan_mix, sample_mix

SPEC_MIX = {"general": 0.4, "domain": 0.3, "multi_turn": 0.2, "edge": 0.1}


@pytest.mark.parametrize("total, expected", [
    (100, {"general": 40, "domain": 30, "multi_turn": 20, "edge": 10}),
    (7, {"general": 3, "domain": 2, "multi_turn": 1, "edge": 1}),  # 2.8/2.1/1.4/0.7: largest remainders win
    (0, {"general": 0, "domain": 0, "multi_turn": 0, "edge": 0}),
])
def test_apportion_sums_to_the_total(total, expected):
    assert apportion(total, SPEC_MIX) == expected


def test_shares_a_hair_over_one_still_apportion_exactly_the_total():
    """The config accepts sums within 1e-6 of 1; unnormalised, 0.5000005 + 0.5 of 2M gave 2,000,001 records."""
    counts = apportion(2_000_000, {"a": 0.5000005, "b": 0.5})
    assert sum(counts.values()) == 2_000_000 and counts == {"a": 1_000_000, "b": 1_000_000}


def test_size_target_met_when_every_category_has_enough():
    plan = plan_mix({"general": 500, "domain": 400, "multi_turn": 300, "edge": 200}, SPEC_MIX, 1000)
    report = plan.to_dict()
    assert plan.size == 1000 and plan.short == []
    assert {c: v["achieved"] for c, v in report["categories"].items()} == \
        {"general": 400, "domain": 300, "multi_turn": 200, "edge": 100}
    assert report["categories"]["domain"]["achieved_share"] == 0.3


def test_short_category_is_reported_not_filled_from_the_others():
    plan = plan_mix({"general": 500, "domain": 120, "multi_turn": 300, "edge": 200}, SPEC_MIX, 1000)
    report = plan.to_dict()
    assert plan.short == ["domain"]
    assert report["categories"]["domain"] == {"target_share": 0.3, "target": 300, "available": 120,
                                              "achieved": 120, "achieved_share": round(120 / 820, 4),
                                              "short": True}
    assert report["categories"]["general"]["achieved"] == 400  # not grown to fill the gap
    assert report["achieved_size"] == 820


def test_without_a_target_the_scarcest_category_sets_the_size():
    # domain allows 60 / 0.3 = 200 records in all; general allows 1000 / 0.4 = 2500
    plan = plan_mix({"general": 1000, "domain": 60, "multi_turn": 100, "edge": 50}, SPEC_MIX, None)
    assert plan.target_size == 200 and plan.size == 200 and plan.short == []
    assert {c: p.selected for c, p in plan.categories.items()} == \
        {"general": 80, "domain": 60, "multi_turn": 40, "edge": 20}


def test_a_category_without_records_is_short_not_a_zero_size_set():
    plan = plan_mix({"general": 40, "domain": 30, "multi_turn": 20}, SPEC_MIX, None)
    assert plan.target_size == 100 and plan.short == ["edge"] and plan.size == 90


def test_sampling_is_seeded_and_keeps_seq_order():
    rows = {c: [{"seq": i * 10 + k, "category": c} for i in range(50)] for k, c in enumerate(SPEC_MIX)}
    plan = plan_mix({c: 50 for c in SPEC_MIX}, SPEC_MIX, 40)
    first, again, other = (sample_mix(rows, plan, seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert [r["seq"] for r in first] == sorted(r["seq"] for r in first)
    assert sum(r["category"] == "general" for r in first) == 16
