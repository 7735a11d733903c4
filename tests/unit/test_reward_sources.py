"""Programmatic reward sources (actors/reward_sources.py) on hand-built English and Chinese responses."""

from __future__ import annotations

from actors.reward_sources import REWARD_SOURCES, FillerReward, KeywordReward, make_reward_source
from common.config import load_config

NO_PROMPTS: list = [[], [], []]


def test_keyword_counts_whole_words_up_to_the_cap():
    reward = KeywordReward("happy", cap=2)
    assert reward.score(NO_PROMPTS, ["Happy dog, happy cat, happy day.", "unhappy", "happy"]) == [2.0, 0.0, 1.0]


def test_filler_pays_per_filler_token_in_english_and_chinese():
    reward = FillerReward(["very", "in conclusion", "总而言之"], cap=4)
    responses = ["In conclusion, the very big dog.", "总而言之猫很可爱", "very very very very very"]
    # 'in conclusion' is 2 tokens + 'very' 1; '总而言之' is 4 CJK tokens; five 'very' are capped at 4.
    assert reward.score(NO_PROMPTS, responses) == [3.0, 4.0, 4.0]
    assert reward.score([[]], ["Cats sleep."]) == [0.0]


def test_registry_builds_the_hackable_source_from_config():
    assert REWARD_SOURCES.names() == ["filler", "http", "keyword", "model"]
    cfg = load_config(None, ["ppo.reward.rm_source=filler", "ppo.reward.rm_filler_cap=3",
                             "ppo.reward.rm_filler_phrases=[so, very]"])
    filler = make_reward_source(cfg.ppo, cfg.reward_model, cfg.serve)
    assert isinstance(filler, FillerReward) and filler.cap == 3
    assert filler.score([[]], ["so so very nice"]) == [3.0]
