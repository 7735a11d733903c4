"""Language-aware token statistics (English words, one token per CJK character) on hand-counted text."""

from __future__ import annotations

import pytest

from actors.algo.text import distinct_n, longest_repeated_span, repeated_ngram_fraction, text_tokens, unique_token_ratio


def test_tokens_split_cjk_per_character_and_latin_per_word():
    assert text_tokens("Don't stop 看过《我是山姆》吗") == ["don't", "stop", "看", "过", "我", "是", "山", "姆", "吗"]
    assert text_tokens("你是sb吗 abc123") == ["你", "是", "sb", "吗", "abc123"]


def test_ratios_by_hand():
    assert unique_token_ratio("a a b") == pytest.approx(2 / 3)
    assert unique_token_ratio("好好好好") == pytest.approx(1 / 4)
    assert unique_token_ratio("") == 1.0
    assert distinct_n(["a b", "a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b c"], 2) == pytest.approx(1.0)
    assert repeated_ngram_fraction("a b c a b c", 3) == pytest.approx(1 - 3 / 4)


def test_longest_repeated_span_is_non_overlapping():
    assert longest_repeated_span("a b c d a b c e") == 3
    assert longest_repeated_span("a a a") == 1
    assert longest_repeated_span("a b c") == 0


def test_symbols_count_as_tokens_when_asked():
    assert text_tokens("Hi!!") == ["hi"]
    assert text_tokens("Hi!!", symbols=True) == ["hi", "!", "!"]
    assert unique_token_ratio("””””") == 1.0  # no words at all: nothing to repeat
    assert unique_token_ratio("””””", symbols=True) == pytest.approx(1 / 4)
    assert repeated_ngram_fraction("! ! ! !", 2, symbols=True) == pytest.approx(1 - 1 / 3)


def test_the_windowed_unique_token_ratio_is_the_mean_over_every_window_by_hand():
    """MATTR: 'a a b a' over windows of 3 is (2/3 + 2/3) / 2; 'a b a b c' over windows of 2 is 1 (every pair
    differs) where the plain ratio is 3/5; a text no longer than the window takes the plain ratio."""
    assert unique_token_ratio("a a b a", window=3) == pytest.approx(2 / 3)
    assert unique_token_ratio("a b a b c", window=2) == 1.0 and unique_token_ratio("a b a b c") == pytest.approx(0.6)
    assert unique_token_ratio("a a b", window=3) == unique_token_ratio("a a b", window=50) == pytest.approx(2 / 3)
    assert unique_token_ratio("", window=3) == 1.0
    loop = "the cat sat on the mat and " * 60  # 6 distinct words in every window of 50: a loop still fails
    assert unique_token_ratio(loop, window=50) == pytest.approx(6 / 50)
