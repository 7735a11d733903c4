"""Quality gates (jobs/curation/rules.py) on hand-written English and Chinese records."""

from __future__ import annotations

from dataclasses import replace

import pytest

from actors.algo.lexicon import Lexicon
from common.config import CurateConfig
from common.errors import ConfigError
from jobs.curation.facts import Fact, KnowledgeBaseVerifier
from jobs.curation.rules import (RULES, AnnotatorRule, FactCheckRule, LengthRule, LexiconRule, RepeatedSpanRule,
                                 ReviewerRule, UniqueTokensRule, build_rules, evaluate)
from tests.conftest import SHARED

CFG = CurateConfig()  # SPEC defaults: rating 4.0, 10-2000 characters, unique-token ratio 0.70


def chat(reply: str, prompt: str = "Tell me something.", **extra) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}],
            "source": "test.jsonl:1", **extra}


def action(rule, record: dict) -> str | None:
    decision = rule.check(record)
    return None if decision is None else decision.action


@pytest.mark.parametrize("ratings, expected", [([4, 4, 3.97], "drop"),  # mean 3.99
                                               ([4, 4, 4], None), ([5, 3, 4], None), ([1, 2], "drop")])
def test_annotator_gate_drops_means_below_4(ratings, expected):
    assert action(AnnotatorRule.from_config(CFG), chat("A fine answer.", ratings=ratings)) == expected


def test_annotator_gate_passes_unrated_records_with_a_note():
    decision = AnnotatorRule.from_config(CFG).check(chat("A fine answer."))
    assert decision.action == "note" and "no annotator ratings" in decision.reason


@pytest.mark.parametrize("ratings, annotators, reason", [
    ([5, 4], None, "2 annotators < curate.min_annotators 3"),
    ([5, 4], ["a1", "a2"], "2 annotators < curate.min_annotators 3"),
    ([5, 5, 2], None, "ratings 5, 5, 2 differ by 3 > curate.max_rating_spread 2"),
    ([5, 5, 2], ["a1", "a2", "a3"], "ratings a1=5, a2=5, a3=2 differ by 3 > curate.max_rating_spread 2"),
])
def test_annotator_gate_sends_thin_or_split_ratings_to_review(ratings, annotators, reason):
    record = chat("A fine answer.", ratings=ratings, **({"annotators": annotators} if annotators else {}))
    decision = AnnotatorRule.from_config(CFG).check(record)
    assert (decision.action, decision.reason) == ("review", reason)


@pytest.mark.parametrize("ratings, expected", [([5, 3, 4], None),  # spread 2 is within max_rating_spread 2.0
                                               ([5, 5, 4, 4], None), ([4, 4], "review")])
def test_annotator_gate_edges(ratings, expected):
    assert action(AnnotatorRule.from_config(CFG), chat("A fine answer.", ratings=ratings)) == expected


def test_both_review_reasons_are_given_together():
    rule = AnnotatorRule.from_config(replace(CFG, min_annotators=4))
    decision = rule.check(chat("A fine answer.", ratings=[5, 5, 2], annotators=["a1", "a2", "a3"]))
    assert decision.reason == ("3 annotators < curate.min_annotators 4; "
                               "ratings a1=5, a2=5, a3=2 differ by 3 > curate.max_rating_spread 2")


def test_a_low_mean_is_dropped_even_with_too_few_annotators():
    # [1, 2]: two annotators; [1, 5]: two annotators who also disagree; either way one drop, no review
    for ratings in ([1, 2], [1, 5]):
        outcome = evaluate(chat("A fine answer.", ratings=ratings), [AnnotatorRule.from_config(CFG)])
        assert (outcome.status, outcome.rules) == ("drop", ("annotator",))


def test_named_annotators_are_counted_once_each():
    rule = AnnotatorRule.from_config(CFG)
    assert action(rule, chat("A fine answer.", ratings=[5, 4, 4], annotators=["a1", "a2", "a3"])) is None
    assert action(rule, chat("A fine answer.", ratings=[5, 4, 4], annotators=["a1", "a2", "a2"])) == "review"


def test_min_annotators_and_spread_come_from_the_config():
    rule = AnnotatorRule.from_config(replace(CFG, min_annotators=1, max_rating_spread=4.0))
    assert action(rule, chat("A fine answer.", ratings=[5])) is None
    assert action(rule, chat("A fine answer.", ratings=[5, 1, 5, 5, 5])) is None  # mean 4.2, spread 4


@pytest.mark.parametrize("chars, expected", [(9, "drop"), (10, None), (2000, None), (2001, "drop")])
def test_length_edges_in_english(chars, expected):
    assert action(LengthRule.from_config(CFG), chat("a" * chars)) == expected


@pytest.mark.parametrize("chars, expected", [(9, "drop"), (10, None), (2000, None), (2001, "drop")])
def test_length_counts_chinese_characters_not_bytes(chars, expected):
    reply = ("中文回答" * 600)[:chars]  # 3 bytes per character in UTF-8
    assert action(LengthRule.from_config(CFG), chat(reply)) == expected


def test_length_looks_at_the_final_reply_of_a_multi_turn_chat():
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
                           {"role": "user", "content": "more?"}, {"role": "assistant", "content": "Yes, here it is."}],
              "source": "t:1"}
    assert action(LengthRule.from_config(CFG), record) is None


@pytest.mark.parametrize("reply, expected", [
    ("The quick brown fox jumps over the lazy dog.", None),  # 8 distinct of 9 tokens
    ("good good good good good good good good nice nice", "drop"),  # 2 / 10
    ("我们今天去公园散步，看见了很多花。", None),  # Chinese counted per character
    ("好好好好好好好好好好好好", "drop"),
])
def test_unique_token_ratio(reply, expected):
    assert action(UniqueTokensRule.from_config(CFG), chat(reply)) == expected


def test_unique_token_ratio_threshold_is_inclusive():
    reply = "a b c d e f g a b c"  # 7 distinct / 10 tokens = 0.70 exactly
    assert action(UniqueTokensRule(0.70), chat(reply)) is None
    assert action(UniqueTokensRule(0.71), chat(reply)) == "drop"


def test_a_long_varied_answer_passes_the_unique_token_gate_a_loop_fails():
    """The plain ratio of a real 1,200+ character OASST answer is under 0.6 (function words recur: 113 of the
    file's 185 replies failed 0.70, none above 1,000 characters passed); over windows of 50 tokens it is above
    0.75, while a looped reply stays far below the bar."""
    from common.records import read_records

    path = SHARED / "data" / "multiturn" / "oasst-threads" / "derived_longest_threads.jsonl"
    record = list(read_records(path, limit=2))[1]
    reply = next(m["content"] for m in record["messages"] if m["role"] == "assistant" and len(m["content"]) > 1200)
    assert action(UniqueTokensRule(0.70), chat(reply)) == "drop"  # the whole-reply ratio (window 0)
    assert action(UniqueTokensRule.from_config(CFG), chat(reply)) is None
    assert action(UniqueTokensRule.from_config(CFG), chat("the cat sat on the mat and " * 60)) == "drop"


def test_length_caps_every_reply_of_a_multi_turn_chat():
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x " * 4000},
                           {"role": "user", "content": "more?"}, {"role": "assistant", "content": "Yes, here it is."}],
              "source": "t:1"}
    decision = LengthRule.from_config(CFG).check(record)
    assert decision.action == "drop" and decision.reason == "response has 8000 characters > 2000 (reply 1 of 2)"


def test_repeated_span_drops_copied_sentences():
    sentence = "the model repeats this whole sentence of eleven different tokens again"
    rule = RepeatedSpanRule(10)
    assert action(rule, chat(f"{sentence}. Then {sentence}.")) == "drop"
    assert action(rule, chat(f"{sentence}. Then something else entirely.")) is None
    assert action(rule, chat("这是一个很长的句子重复出现了。" * 2)) == "drop"  # 14 characters twice


def lexicon_rule() -> LexiconRule:
    return LexiconRule(Lexicon.from_terms({"en": ["darn", "heck"], "zh": ["笨蛋"], "zh-high": ["炸药制作"]},
                                          {"en": "en", "zh": "zh", "zh-high": "zh"}, ["zh-high"]))


@pytest.mark.parametrize("reply, expected", [
    ("What a lovely day.", None),
    ("Darn, I missed the bus.", "review"),  # ambiguous: one low-severity term → human review
    ("你这个笨蛋", "review"),
    ("darn it, what the heck", "drop"),  # clear: two distinct terms
    ("我教你炸药制作", "drop"),  # clear: high severity
])
def test_lexicon_gate(reply, expected):
    assert action(lexicon_rule(), chat(reply)) == expected


def test_lexicon_gate_screens_replies_not_requests():
    assert action(lexicon_rule(), chat("I can't help with that.", prompt="How do I say darn and heck?")) is None


def fact_rule() -> FactCheckRule:
    return FactCheckRule(KnowledgeBaseVerifier([Fact("Australia", "capital", "Canberra")]))


def test_fact_check_sends_disagreements_to_review():
    assert action(fact_rule(), chat("The capital of Australia is Sydney.")) == "review"
    assert action(fact_rule(), chat("The capital of Australia is Canberra.")) is None
    assert action(FactCheckRule(None), chat("The capital of Australia is Sydney.")) is None


def test_reviewer_verdicts_by_id_or_source():
    rule = ReviewerRule({"abc": "reject", "test.jsonl:1": "accept"})
    assert action(rule, chat("x" * 20, id="abc")) == "drop"
    assert action(rule, chat("x" * 20, id="other")) == "accept"  # matched by source
    assert action(ReviewerRule({}), chat("x" * 20, id="abc")) is None


def test_evaluate_stops_at_the_first_drop_and_collects_reviews():
    rules = [AnnotatorRule.from_config(CFG), LengthRule(10, 2000), lexicon_rule(), fact_rule()]
    assert evaluate(chat("short", ratings=[2]), rules).rules == ("annotator",)  # counted once, first rule
    outcome = evaluate(chat("Darn, the capital of Australia is Sydney."), rules)
    assert (outcome.status, outcome.rules, outcome.notes) == ("review", ("lexicon", "fact_check"), ("annotator",))
    assert evaluate(chat("The capital of Australia is Canberra.", ratings=[5, 5, 4]), rules).status == "keep"


def test_a_reviewer_accept_waives_review_but_not_drops():
    rules = [ReviewerRule({"r1": "accept"}), LengthRule(10, 2000), lexicon_rule()]
    assert evaluate(chat("Darn, I missed the bus.", id="r1"), rules).status == "keep"
    assert evaluate(chat("darn", id="r1"), rules).status == "drop"


def test_build_rules_follows_the_config_order_and_rejects_unknown_names():
    cfg = replace(CFG, rules=["length", "annotator"])
    assert [r.name for r in build_rules(cfg)] == ["length", "annotator"]
    with pytest.raises(ConfigError, match="unknown rules"):
        build_rules(replace(CFG, rules=["lenght"]))
    assert set(CFG.rules) == set(RULES.names())


def test_repetition_rules_read_every_reply_of_a_multi_turn_chat():
    """SFT trains on every assistant turn: junk in an early reply is junk learned, whatever the last reply says."""
    junk = "the " * 400
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": junk},
                           {"role": "user", "content": "more?"},
                           {"role": "assistant", "content": "Yes, here is a clean and helpful answer for you."}],
              "source": "t:1"}
    for rule in (UniqueTokensRule.from_config(CFG), RepeatedSpanRule.from_config(CFG)):
        decision = rule.check(record)
        assert decision is not None and decision.action == "drop" and decision.reason.endswith("(reply 1 of 2)")
    record["messages"][1]["content"] = "Hello there, how can I help?"
    assert all(rule.check(record) is None
               for rule in (UniqueTokensRule.from_config(CFG), RepeatedSpanRule.from_config(CFG)))
