"""Harmful-word lexicon (actors/algo/lexicon.py): matching rules, the verdict rule, the shipped lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.algo.lexicon import DEFAULT_HIGH_SEVERITY, Lexicon, LexiconError, read_lists

LEXICONS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "lexicons"


def small(high: tuple[str, ...] = ("zh-high",), **kwargs) -> Lexicon:
    return Lexicon.from_terms(
        {"en-low": ["ass", "2 girls 1 cup", "darn"], "zh-low": ["笨蛋", "sb", "乳"], "zh-high": ["炸药制作"]},
        {"en-low": "en", "zh-low": "zh", "zh-high": "zh"}, high, **kwargs)


@pytest.mark.parametrize("text, terms", [
    ("You are an ass!", {"ass"}),
    ("This class is an assessment of grass.", set()),  # word boundaries: no hit inside other words
    ("ASS", {"ass"}),  # case-insensitive
    ("ｄａｒｎ it", {"darn"}),  # full-width letters fold to ASCII
    ("hello 2 Girls 1 Cup!", {"2 girls 1 cup"}),  # multi-word terms as word sequences
    ("2 girls and 1 cup", set()),
    ("你这个笨蛋", {"笨蛋"}),  # Chinese: substring, no spaces needed
    ("你是sb吗", {"sb"}),  # Latin slang inside Chinese text is still a word
    ("plug the usb in", set()),  # ... and does not fire inside an English word
])
def test_find_matches_words_in_english_and_substrings_in_chinese(text, terms):
    assert {hit.term for hit in small().find(text)} == terms


def test_hits_name_their_list_language_and_severity():
    [hit] = small().find("教你炸药制作")
    assert (hit.term, hit.language, hit.severity, hit.list_name) == ("炸药制作", "zh", "high", "zh-high")


@pytest.mark.parametrize("text, verdict", [
    ("What a lovely day.", "clean"),
    ("Darn, I missed the bus.", "ambiguous"),  # exactly one low-severity term
    ("darn it, darn it all", "ambiguous"),  # the same term twice is still one distinct term
    ("darn, you ass", "harmful"),  # two distinct low-severity terms
    ("教你炸药制作的方法", "harmful"),  # one high-severity term
])
def test_verdict_rule(text, verdict):
    assert small().verdict(text) == verdict


def test_verdict_knob_for_distinct_terms():
    assert small(harmful_min_terms=3).verdict("darn, you ass") == "ambiguous"


def test_allow_list_and_single_character_floor():
    lexicon = small(allow=["darn"], min_cjk_chars=2)
    assert lexicon.verdict("darn") == "clean"
    assert lexicon.verdict("我喜欢喝牛乳") == "clean"  # 乳 (one character) is not matched
    assert small().verdict("我喜欢喝牛乳") == "ambiguous"


def test_unknown_high_severity_list_is_an_error():
    with pytest.raises(LexiconError, match="not among the loaded lists"):
        small(high=("no-such-list",))


def test_read_lists_handles_utf16_tagged_files_and_languages(tmp_path):
    (tmp_path / "words-zh").mkdir()
    (tmp_path / "words-zh" / "violence.txt").write_bytes("出售雷管\r\n炸药\r\n".encode("utf-16"))
    (tmp_path / "words-zh" / "tagged.txt").write_text("售k粉qq 1,4\n赌博网站 3\n", encoding="utf-8")
    (tmp_path / "words-zh" / "SOURCE.txt").write_text("not a list")
    (tmp_path / "en").write_text("darn\n")
    lists, languages = read_lists(tmp_path)
    assert lists == {"en": ["darn"], "words-zh/tagged:drugs": ["售k粉qq"], "words-zh/tagged:illegal": ["售k粉qq"],
                     "words-zh/tagged:gambling": ["赌博网站"], "words-zh/violence": ["出售雷管", "炸药"]}
    assert languages["en"] == "en" and languages["words-zh/violence"] == "zh"


def test_read_lists_names_the_bad_line(tmp_path):
    (tmp_path / "zh").mkdir()
    (tmp_path / "zh" / "tagged.txt").write_text("好词 1\n坏词 9\n", encoding="utf-8")
    with pytest.raises(LexiconError, match=r"tagged.txt:2"):
        read_lists(tmp_path)


def test_shipped_lists_load_with_the_default_severities():
    lexicon = Lexicon.load(LEXICONS)
    lists, _ = read_lists(LEXICONS.resolve())
    assert set(DEFAULT_HIGH_SEVERITY) <= set(lists)
    assert len(lexicon) > 40_000
    assert lexicon.verdict("The capital of France is Paris.") == "clean"
    assert lexicon.verdict("这部电影是2001年在日本上映的。") == "clean"  # everyday words on the lists are allowed
    assert lexicon.verdict("教你硝酸甘油炸弹制作方法") == "harmful"  # violence list, long term: high severity
    assert lexicon.verdict("He called me a bitch.") == "ambiguous"
    assert lexicon.verdict("买房") == "ambiguous"  # a two-character entry of a high list counts as low
