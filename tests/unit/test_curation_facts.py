"""Claim extraction and the knowledge-base verifier (jobs/curation/facts.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from common.config import CurateConfig
from common.errors import ConfigError, RecordError
from jobs.curation.facts import (Claim, Fact, FactVerifier, Finding, KnowledgeBaseVerifier, extract_claims, find_dates,
                                 load_verifier, make_claim, read_facts)

KB = KnowledgeBaseVerifier([
    Fact("Australia", "capital", "Canberra"),
    Fact("Brazil", "capital", "Brasília"),
    Fact("nitrogen", "boiling point", "-195.8", unit="degrees Celsius"),
    Fact("我是山姆", "上映时间", "2001年12月28日", cues=("上映",)),
    Fact("我是山姆", "片长", "132", cues=("片长", "分钟"), unit="分钟"),
    Fact("大卫·芬奇", "出生日期", "1962年08月28日", cues=("出生",)),
])


def statuses(sentence: str, context: str = "") -> list[str]:
    return [f.status for f in KB.verify(make_claim(sentence, context))]


@pytest.mark.parametrize("text, dates", [
    ("它是2001年12月28日上映的", ((2001, 12, 28),)),
    ("released on December 28, 2001 in the US", ((2001, 12, 28),)),
    ("on 2001-12-28", ((2001, 12, 28),)),
    ("in 1969, and 28 July 1914", ((1914, 7, 28), (1969, None, None))),
    ("1538 degrees, 12.5 percent", ((1538, None, None),)),  # a bare year-like number counts as a year
])
def test_find_dates(text, dates):
    assert sorted(find_dates(text)) == sorted(dates)


def test_claims_are_assistant_sentences_with_checkable_values():
    record = {"messages": [{"role": "user", "content": "Tell me about Paris in 1900."},
                           {"role": "assistant", "content": "Sure. It hosted the World Fair in 1900. It was fun!"}]}
    [claim] = extract_claims(record)
    assert claim.sentence == "It hosted the World Fair in 1900."
    assert claim.dates == ((1900, None, None),) and claim.names == ("World Fair",)
    assert claim.context == "Tell me about Paris in 1900.\nSure."  # earlier turns and sentences


@pytest.mark.parametrize("sentence, expected", [
    ("The capital of Australia is Canberra.", ["agree"]),
    ("The capital of Australia is Sydney.", ["disagree"]),  # another name where the value should be
    ("The capital of Australia is a planned city.", []),  # nothing checkable: no verdict
    ("The capital of Brazil is Brasilia.", ["agree"]),  # accents do not matter
    ("Australia has beautiful beaches.", []),  # subject without the attribute's cue
])
def test_names(sentence, expected):
    assert statuses(sentence) == expected


@pytest.mark.parametrize("sentence, expected", [
    ("The boiling point of nitrogen is -195.79 degrees Celsius.", ["agree"]),  # within rel_tol
    ("The boiling point of nitrogen is -150 degrees Celsius.", ["disagree"]),
    ("The boiling point of nitrogen is -320 degrees Fahrenheit.", []),  # another unit is not comparable
])
def test_numbers_with_units(sentence, expected):
    assert statuses(sentence) == expected


@pytest.mark.parametrize("sentence, expected", [
    ("它是2001年12月28日上映的，很感人的电影。", ["agree"]),
    ("是2001年上映的。", ["agree"]),  # agrees on every component it states
    ("它是2002年上映的。", ["disagree"]),
    ("是的132分钟，你就准备好哭吧。", ["agree"]),
    ("片长120分钟。", ["disagree"]),
])
def test_chinese_dialogue_resolves_the_subject_from_earlier_turns(sentence, expected):
    assert statuses(sentence, context="看过《我是山姆》吗？") == expected


def test_earlier_sentences_of_the_same_reply_are_context():
    record = {"messages": [{"role": "user", "content": "Any film tips?"},
                           {"role": "assistant", "content": "Try 《我是山姆》. 它是2002年上映的。"}]}
    claims = extract_claims(record)
    assert [f.status for c in claims for f in KB.verify(c)] == ["disagree"]


def test_the_latest_named_subject_is_the_one_talked_about():
    context = "看过《我是山姆》吗？\n看过，导演是大卫·芬奇吗？"
    assert statuses("他是1962年出生的。", context) == ["agree"]
    assert statuses("它是2002年上映的。", context) == []  # 大卫·芬奇 has no release date: no verdict


def test_read_facts_names_the_bad_line(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"subject": "a", "attribute": "b", "value": "c"}) + "\n"
                    + json.dumps({"subject": "a", "attribute": "b"}) + "\n")
    with pytest.raises(RecordError, match=r"facts.jsonl:2: 'value'"):
        read_facts(path)
    path.write_text('{"subject": "a", "attribute": "b", "value": "c", "colour": "red"}\n')
    with pytest.raises(RecordError, match="unknown keys"):
        read_facts(path)


class AlwaysDisagrees(FactVerifier):
    """A stand-in for a user's web verifier, loaded by import path."""

    def verify(self, claim: Claim) -> list[Finding]:
        return [Finding("disagree", claim.sentence, "?", "!", "test")]


def test_verifier_plugins_load_by_name_or_import_path(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"subject": "a", "attribute": "b", "value": "c"}) + "\n")
    cfg = CurateConfig()
    assert load_verifier(cfg) is None
    assert isinstance(load_verifier(replace(cfg, fact_verifier="kb", facts_file=str(facts))), KnowledgeBaseVerifier)
    plugin = load_verifier(replace(cfg, fact_verifier=f"{__name__}:AlwaysDisagrees"))
    assert isinstance(plugin, AlwaysDisagrees)
    with pytest.raises(ConfigError, match="importable"):
        load_verifier(replace(cfg, fact_verifier="no.such.module:Verifier"))
    with pytest.raises(ConfigError, match="not a FactVerifier"):
        load_verifier(replace(cfg, fact_verifier="json:dumps"))
