"""PPO prompt loading (template, multi-turn prompts, nothing usable) and the per-step prompt schedule."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from actors.ppo_prompts import load_prompts, prompts_for_step
from common.config import load_config
from tests.conftest import TINY_CPU


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_template_wraps_the_last_user_turn_and_multi_turn_prompts_keep_their_history(tmp_path):
    files = write_jsonl(tmp_path / "p.jsonl", [
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
        {"messages": [{"role": "user", "content": "Name a pet."}, {"role": "assistant", "content": "A cat."},
                      {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "A dog."}]},
    ])
    cfg = load_config(TINY_CPU, [f"ppo.prompt_files=[{files}]", "ppo.prompt_template='Q: {prompt} A:'"])
    prompts = load_prompts(cfg.ppo)
    assert prompts[0].turns == [{"role": "user", "content": "Q: Say hi. A:"}]
    # The policy answers the last user turn; earlier turns stay as they were, the final reply is dropped.
    assert prompts[1].turns == [{"role": "user", "content": "Name a pet."}, {"role": "assistant", "content": "A cat."},
                                {"role": "user", "content": "Q: Another? A:"}]
    assert prompts[1].source == f"{files}:2" and prompts[1].columns == {}


def test_a_prompt_keeps_its_other_fields_for_reward_functions(tmp_path):
    files = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Tell me a story about a fox.", "animal": "fox"}])
    [prompt] = load_prompts(load_config(TINY_CPU, [f"ppo.prompt_files=[{files}]"]).ppo)
    assert prompt.turns == [{"role": "user", "content": "Tell me a story about a fox."}]
    assert prompt.columns == {"animal": "fox"} and prompt.source == f"{files}:1"


def test_no_prompt_ending_in_a_user_turn_is_a_clear_error(tmp_path):
    from common.errors import EmptyDatasetError

    files = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "assistant", "content": "Hello."}]}])
    with pytest.raises(EmptyDatasetError, match="no PPO prompts ending in a user turn"):
        load_prompts(load_config(TINY_CPU, [f"ppo.prompt_files=[{files}]"]).ppo)


def test_each_pass_uses_every_prompt_once_and_a_resume_sees_the_same_prompts():
    pool, batch = 10, 4  # a pass ends in the middle of step 2: its last 2 prompts there, the next pass's first 2
    steps = [prompts_for_step(pool, batch, step, seed=3) for step in range(5)]
    sequence = [index for picks in steps for index in picks]
    assert sorted(sequence[:10]) == list(range(10)) and sorted(sequence[10:20]) == list(range(10))
    assert sequence[10:20] != sequence[:10]  # reshuffled
    # 24 prompts in batches of 16 (10 steps): each used 6 or 7 times, not 3 to 9.
    counts = Counter(i for step in range(10) for i in prompts_for_step(24, 16, step, seed=0))
    assert set(counts) == set(range(24)) and set(counts.values()) <= {6, 7}
    # Where pool and batch divide, the picks are the passes-of-steps ones: a seeded shuffle per pass, in order.
    order = list(range(12))
    random.Random(3 * 7919 + 1).shuffle(order)
    assert prompts_for_step(12, 4, 4, seed=3) == order[4:8]
    assert prompts_for_step(pool, batch, 5, seed=3) == prompts_for_step(pool, batch, 5, seed=3)
    assert prompts_for_step(pool, batch, 5, seed=3) != prompts_for_step(pool, batch, 5, seed=4)
    # A pool smaller than the batch repeats prompts to fill it.
    small = prompts_for_step(3, 5, 0, seed=1)
    assert len(small) == 5 and set(small) == {0, 1, 2}


def test_held_out_prompts_are_a_seeded_disjoint_share_of_the_pool():
    from actors.ppo_prompts import hold_out

    train, held = hold_out(100, 16, seed=7)
    assert len(held) == 16 and len(train) == 84 and sorted(train + held) == list(range(100))
    assert hold_out(100, 16, seed=7) == (train, held)  # a resumed run holds out the same prompts
    assert hold_out(100, 16, seed=8)[1] != held


def test_holding_out_the_whole_pool_is_refused():
    from actors.ppo_prompts import hold_out
    from common.errors import EmptyDatasetError

    with pytest.raises(EmptyDatasetError, match="ppo.eval_prompts=40 would hold out all 40 PPO prompts"):
        hold_out(40, 40, seed=7)


def test_dynamic_samplings_extra_rounds_draw_seeded_prompts_without_repeats():
    from actors.ppo_prompts import prompts_for_extra_round

    first, second = prompts_for_extra_round(10, 4, 3, 1, seed=7), prompts_for_extra_round(10, 4, 3, 2, seed=7)
    assert len(set(first)) == 4 and first != second  # each round its own draw
    assert prompts_for_extra_round(10, 4, 3, 1, seed=7) == first  # a resumed run draws the same
    assert prompts_for_extra_round(10, 4, 4, 1, seed=7) != first
    assert sorted(prompts_for_extra_round(3, 5, 0, 1, seed=1)[:3]) == [0, 1, 2]  # the pool first, then repeats
