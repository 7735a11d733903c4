"""Multi-turn episodes without a cluster: the loss mask of a hand-built three-turn episode covers exactly the
model's tokens, the shipped environments' rules, tool calls run in a subprocess (timeout, no network, errors as
observations), and an environment that raises, hangs or returns garbage ends only its own episode."""

from __future__ import annotations

import time

import pytest

from actors import modeling
from actors.chat import render
from actors.environments import (ENVIRONMENTS, Calculator, EnvironmentWorker, FollowUp, Turn, parse_tool_call,
                                 run_tool)
from actors.episodes import episode_metrics, run_episodes
from actors.protocol import TokenBatch
from actors.rollout.sample import Sample
from common.config import load_config
from common.config.ppo import SHIPPED_ENVIRONMENTS
from common.errors import ConfigError
from tests.conftest import POLICY_PATH


@pytest.fixture(scope="module")
def tokenizer():
    return modeling.load_tokenizer(str(POLICY_PATH))


class ThreeTurns:
    """Answers each model turn with a user turn, twice, and ends after the third: rewards 0.5, 0.25, 1."""

    def __init__(self):
        self.turn = 0

    def reset(self, record):
        return list(record["messages"])

    def step(self, text):
        self.turn += 1
        if self.turn == 3:
            return [], 1.0, True
        return [{"role": "user", "content": f"And then? ({self.turn})"}], [0.5, 0.25][self.turn - 1], False


def test_a_three_turn_episode_masks_exactly_the_models_tokens(tokenizer):
    answers = [tokenizer("Once upon a time", add_special_tokens=False)["input_ids"],
               tokenizer("the dog ran", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
               tokenizer("and ran home", add_special_tokens=False)["input_ids"]]

    def generate(ids, turn):  # the model's turns, written by hand: what a rollout engine would have sampled
        return [Sample(list(p), answers[turn], [-0.1 * (turn + 1)] * len(answers[turn]), "stop") for p in ids]

    env = ThreeTurns()
    prompt = [{"role": "user", "content": "Tell me a story."}]
    (episode,) = run_episodes(tokenizer, [Turn(env.reset({"messages": prompt}), 0.0, False)], [prompt], generate,
                              lambda episodes, texts: [Turn(*env.step(t)) for t in texts], max_turns=5,
                              max_prompt_tokens=64, max_new_tokens=8, max_total_tokens=256,
                              max_observation_chars=100)
    assert episode.rewards == [0.5, 0.25, 1.0] and episode.reward == 1.75 and len(episode.texts) == 3
    # A reward model judges the conversation the episode had, its last model turn as the reply.
    turns, last = episode.for_scoring()
    assert [m["role"] for m in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert turns[-1]["content"] == "And then? (2)" and last == episode.texts[2] and turns[3]["content"] == \
        episode.texts[1]
    sample = episode.sample()
    batch = TokenBatch.from_samples([sample.prompt_ids], [sample.response_ids], tokenizer.pad_token_id,
                                    [sample.response_mask])
    ids, actions = batch.input_ids[0], batch.action_mask[0]
    # Action position t is about token t+1: the tokens the mask selects are the three answers, in order.
    chosen = [int(ids[t + 1]) for t in range(len(actions)) if actions[t] == 1]
    assert chosen == answers[0] + answers[1] + answers[2]
    # Everything else after the prompt is the environment's: the chat template's own rendering.
    conversation = prompt + [{"role": "assistant", "content": "Once upon a time"},
                             {"role": "user", "content": "And then? (1)"},
                             {"role": "assistant", "content": "the dog ran"},
                             {"role": "user", "content": "And then? (2)"}]
    text = render(tokenizer, conversation, add_generation_prompt=True)
    assert tokenizer.decode(ids[:len(sample.prompt_ids) + len(sample.response_ids) - len(answers[2])]) \
        .replace(" ", "") == text.replace(" ", "")
    per_token = batch.per_token([sample.response_logprobs])[0]
    expected = [-0.1 * (turn + 1) for turn, answer in enumerate(answers) for _ in answer]
    assert per_token[actions == 1].tolist() == pytest.approx(expected)
    assert per_token[actions == 0].abs().sum() == 0
    assert episode_metrics([episode], 3) == {"env/reward": 1.75, "env/turns_mean": 3.0, "env/errors": 0,
                                             "env/reward_turn_1": 0.5, "env/reward_turn_2": 0.25,
                                             "env/reward_turn_3": 1.0}


def test_an_episode_the_token_budget_ends_keeps_its_last_turns_own_finish(tokenizer):
    """The budget leaves no room for a second turn after a first that ended with EOS: the episode ends, but the turn
    the reward model scores ended itself, so ppo.reward.missing_eos_penalty must not charge it ("stop", not
    "length"); a turn cut at max_new_tokens stays "length"."""
    answer = tokenizer("the dog ran", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt = [{"role": "user", "content": "Tell me a story."}]
    for reason in ("stop", "length"):
        env = ThreeTurns()

        def generate(ids, turn):
            return [Sample(list(p), answer, [-0.1] * len(answer), reason) for p in ids]

        (episode,) = run_episodes(tokenizer, [Turn(env.reset({"messages": prompt}), 0.0, False)], [prompt], generate,
                                  lambda episodes, texts: [Turn(*env.step(t)) for t in texts], max_turns=5,
                                  max_prompt_tokens=64, max_new_tokens=8, max_total_tokens=40,
                                  max_observation_chars=100)
        assert len(episode.texts) == 1 and episode.done and episode.error is None
        assert episode.sample().finish_reason == reason


def test_follow_up_pays_for_the_word_it_asked_about_in_the_second_turn():
    env = FollowUp()
    assert env.reset({"messages": [{"role": "user", "content": "Tell me a story about a dog."}], "word": "Ball"})
    observation, reward, done = env.step("The dog played.")
    assert (reward, done) == (0.0, False) and "ball" in observation[0]["content"]
    assert env.step("The ball was red.") == ([], 1.0, True)
    env.reset({"messages": [], "word": "ball"})
    env.step("x")
    assert env.step("The balloon flew.") == ([], 0.0, True)  # whole words only


def test_tool_calls_run_in_a_subprocess_and_every_failure_is_an_observation(tmp_path, monkeypatch):
    (tmp_path / "user_tools.py").write_text("import socket, time\n"
                                            "def sleep(seconds):\n    time.sleep(seconds)\n"
                                            "def fetch(host):\n    return socket.create_connection((host, 80))\n"
                                            "def raw():\n    return socket.socket()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert parse_tool_call("no call here") is None
    assert parse_tool_call('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>') == \
        ("add", {"a": 2, "b": 3})
    assert parse_tool_call("<tool_call>{add 2 3}</tool_call>").startswith("error: the tool call is not JSON")
    assert run_tool("actors.tools:add", {"a": 2, "b": 3}, 10) == "5"
    assert run_tool("actors.tools:add", {"a": 2}, 10).startswith("error: TypeError")
    assert run_tool("user_tools:sleep", {"seconds": 30}, 1.0) == "error: the tool ran past its 1 s limit"
    assert run_tool("user_tools:fetch", {"host": "127.0.0.1"}, 10) == \
        "error: PermissionError: tools run without network access"
    assert run_tool("user_tools:raw", {}, 10) == "error: PermissionError: tools run without network access"
    calc = Calculator()
    calc.reset({"messages": [{"role": "user", "content": "2+3?"}], "answer": "5"})
    observation, reward, done = calc.step('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>')
    assert observation == [{"role": "tool", "content": "5"}] and not done
    assert calc.step('<tool_call>{"name": "mul", "arguments": {}}</tool_call>')[0][0]["content"].startswith(
        "error: unknown tool 'mul'")
    assert calc.step("It is 5.") == ([], 1.0, True)
    calc.reset({"messages": [{"role": "user", "content": "2+3?"}], "answer": "5"})
    assert calc.step("It is 15.") == ([], 0.0, True)  # a substring test paid this
    calc.reset({"messages": [{"role": "user", "content": "2+3?"}], "answer": "5"})
    assert calc.step("Add 2 and 3: 5.0") == ([], 1.0, True)
    with pytest.raises(ValueError, match="needs an 'answer' field"):
        calc.reset({"messages": [{"role": "user", "content": "2+3?"}]})
    assert run_tool("actors.tools:add", {"a": "1", "b": "2"}, 10) == \
        "error: TypeError: a must be a number, got str '1'"  # not "12"


class Broken:
    def __init__(self, how: str = "raise"):
        self.how = how

    def reset(self, record):
        return record["messages"]

    def step(self, text):
        if text == "raise":
            raise ValueError("bad turn")
        if text == "hang":
            time.sleep(5)
        if text == "garbage":
            return "not messages", 1.0, False
        return [], 1.0, True


def test_an_environment_that_raises_hangs_or_returns_garbage_ends_only_its_episode(monkeypatch):
    worker = EnvironmentWorker("actors.environments:FollowUp", {}, timeout_s=0.5)
    worker.factory = Broken  # the worker's own loop, on an environment written to fail
    worker.reset([{"messages": [{"role": "user", "content": "hi"}]}] * 4)
    turns = worker.step([0, 1, 2, 3], ["raise", "hang", "garbage", "fine"])
    assert [t.done for t in turns] == [True, True, True, True]
    assert turns[0].error == "raised ValueError: bad turn"
    assert turns[1].error == "did not return within ppo.environment.timeout_s=0.5 s"
    assert turns[2].error.startswith("returned ")
    assert turns[3] == Turn([], 1.0, True)


def test_hung_episodes_end_alone_under_one_deadline_per_batch():
    """16 episodes, 8 of them hung: the 8 healthy ones answer and the batch takes about one timeout (it took 4.8 s
    with a pool of 8 and a wait per call, every episode timed out), and the next batch is not starved."""
    worker = EnvironmentWorker("actors.environments:FollowUp", {}, timeout_s=0.3)
    worker.factory = Broken
    worker.reset([{"messages": [{"role": "user", "content": "hi"}]}] * 16)
    started = time.monotonic()
    turns = worker.step(list(range(16)), ["hang", "fine"] * 8)
    assert time.monotonic() - started < 1.0
    assert [t.error is None for t in turns] == [False, True] * 8
    worker.reset([{"messages": [{"role": "user", "content": "hi"}]}] * 16)
    assert all(t.error is None for t in worker.step(list(range(16)), ["fine"] * 16))


def test_the_shipped_names_match_the_registry_and_bad_settings_are_refused():
    assert sorted(ENVIRONMENTS.names()) == sorted(SHIPPED_ENVIRONMENTS)
    with pytest.raises(ConfigError, match="environment.name 'chess' is neither a shipped environment"):
        load_config(None, ["ppo.environment.name=chess"])
    with pytest.raises(ConfigError, match="multi-turn episodes, which async_rollouts does not support yet"):
        load_config(None, ["ppo.environment.name=follow_up", "ppo.async_rollouts=1"])


def test_the_text_between_turns_comes_from_the_template_and_a_rewriting_template_is_refused(tokenizer):
    """The turn's end is found after a sentinel: searching for the model's text found 'end' inside '<|end|>'. A
    template that rewrites a turn once another follows (as Qwen3 drops <think> blocks) cannot be appended to."""
    import copy

    from actors.episodes import closing_and_observation

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
                           "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    history = [{"role": "user", "content": "Say a word."}]
    between = closing_and_observation(plain, history, "end", [{"role": "user", "content": "And?"}], False)
    assert between == "<|end|><|user|>And?<|end|><|assistant|>"
    assert closing_and_observation(plain, history, "", [{"role": "user", "content": "And?"}], False) == between
    rewriting = copy.deepcopy(plain)
    rewriting.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' and not loop.last %}"
                               "{{ m.content.split('</think>')[-1] }}{% else %}{{ m.content }}{% endif %}<|end|>"
                               "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    with pytest.raises(ValueError, match="renders the model's turn differently once another turn follows it"):
        closing_and_observation(rewriting, history, "<think>hmm</think>Word.", [{"role": "user", "content": "?"}],
                                False)
