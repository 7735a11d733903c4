"""Plug-in reward functions: the shipped verifiable ones on hand-written answers, loading by module or by file
path, the columns a function is handed, and every way a function can misbehave named by function and record.
The worker class runs in process here; tests/integration/test_ppo_reward_functions.py runs it as a Ray actor."""

from __future__ import annotations

import pytest
import torch

from actors.reward_functions import RewardFunctionWorker, check_values, judge
from actors.reward_library import final_number, mentions_answer, numeric_answer, regex_format
from common.config import RewardFunctionConfig, load_config
from common.errors import ConfigError, RewardFunctionError
from common.plugins import check_reward_functions, load_callable, required_columns

NO_PROMPTS = [[]] * 4


# ---- the shipped functions -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, number", [
    ("The answer is 42.", "42"), ("First 3, then 1,000 apples", "1000"), ("x = 1000.0", "1000"),
    ("It costs −3 dollars", "-3"), ("12 cats.\n#### 7", "7"), ("#### 1,250.50 and later 9", "1250.5"),
    ("no number here", None),
])
def test_the_final_answer_is_the_marked_number_or_else_the_last_one(text, number):
    found = final_number(text)
    assert (str(found) if found is not None else None) == (None if number is None else str(final_number(number)))


def test_numeric_answer_compares_numbers_not_spellings():
    responses = ["So she has 1,000 coins.", "#### 12", "maybe 7 or 8", "none"]
    assert numeric_answer(NO_PROMPTS, responses, answer=["1000.0", 12, "7", "3"]) == [1.0, 1.0, 0.0, 0.0]
    # GSM8K's answer column is the worked solution ending in '#### <number>'; anything else unparseable is named.
    gsm8k = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72"
    assert numeric_answer(NO_PROMPTS, ["She sold 72.", "48"], answer=[gsm8k, gsm8k]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="answer 'seventy' is neither a number nor text ending in '#### <number>'"):
        numeric_answer(NO_PROMPTS, ["72"], answer=["seventy"])


def test_regex_format_searches_or_matches_the_whole_response():
    responses = ["<answer>4</answer>", "I think <answer>4</answer> is right", "<answer></answer>", ""]
    pattern = r"<answer>\d+</answer>"
    assert regex_format(NO_PROMPTS, responses, pattern=pattern) == [1.0, 1.0, 0.0, 0.0]
    assert regex_format(NO_PROMPTS, responses, pattern=pattern, full=True) == [1.0, 0.0, 0.0, 0.0]


def test_mentions_answer_wants_the_whole_word():
    responses = ["The dogs ran home.", "A hotdog stand.", "CAT!", "Nothing"]
    assert mentions_answer(NO_PROMPTS, responses, answer=["dog", "dog", "cat", "owl"]) == [1.0, 0.0, 1.0, 0.0]
    # An answer ending in a symbol: \b after '+' never matched, so these scored 0.
    assert mentions_answer(NO_PROMPTS, ["Use C++ here.", "Use C here."], answer=["C++", "C++"]) == [1.0, 0.0]


# ---- loading ---------------------------------------------------------------------------------------------
def test_a_function_loads_by_module_or_by_file_path_and_names_its_columns(tmp_path):
    assert load_callable("actors.reward_library:numeric_answer", "k") is numeric_answer
    by_path = load_callable("configs/rewards/names_the_animal.py:reward", "k")
    assert by_path(NO_PROMPTS[:2], ["a dog", "a cat"], animal=["dog", "owl"]) == [1.0, 0.0]
    assert required_columns(by_path) == ["animal"]
    assert required_columns(regex_format, frozenset({"pattern"})) == []  # given by the config's kwargs
    assert required_columns(regex_format) == ["pattern"]


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz' (ModuleNotFoundError"),
    ("actors.reward_library:nothing", "'actors.reward_library' has no callable 'nothing'"),
    ("missing/file.py:fn", "does not exist"),
])
def test_a_function_that_cannot_be_had_is_one_config_error_naming_the_key(spec, message):
    with pytest.raises(ConfigError, match=r"^ppo.reward.functions\[0\].callable: ") as info:
        load_callable(spec, "ppo.reward.functions[0].callable")
    assert message in str(info.value)


def test_before_ray_a_missing_column_names_the_function_and_the_record(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "Tell me a story about a dog.", "animal": "dog"}\n{"prompt": "And a cat?"}\n')
    spec = "configs/rewards/names_the_animal.py:reward"
    cfg = load_config(None, [f"ppo.prompt_files=[{prompts}]", f"ppo.reward.functions=[{{callable: '{spec}'}}]"])
    with pytest.raises(ConfigError, match=rf"^ppo.reward.functions\[0\].callable: {spec} needs column\(s\) "
                                          rf"\['animal'\], which the prompt record from {prompts}:2 lacks$"):
        check_reward_functions(cfg.ppo)


# ---- what a function returns -----------------------------------------------------------------------------
def test_values_must_be_one_finite_number_per_response():
    assert check_values([1, 0.5, True], 3) == ([1.0, 0.5, 0.0], [(2, "returned True, not a number")])
    assert check_values(torch.tensor([1.0, float("nan")]), 2)[1] == [(1, "returned nan")]
    assert check_values([1.0], 2)[1] == [(0, "returned 1 values for 2 responses")]
    assert check_values(7, 1)[1] == [(0, "returned int, not a list of numbers")]


def flaky(prompts, responses, answer):
    """Raises on the record whose answer is 'boom'; returns NaN for 'nan'."""
    if "boom" in answer:
        raise RuntimeError("boom!")
    return [float("nan") if a == "nan" else 1.0 for a in answer]


def worker_for(*specs: RewardFunctionConfig) -> RewardFunctionWorker:
    return RewardFunctionWorker(list(specs))


def test_a_raising_function_is_retried_record_by_record_to_name_the_record(monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules[__name__], "flaky", flaky)
    worker = worker_for(RewardFunctionConfig(callable=f"{__name__}:flaky", name="flaky"))
    columns = [{"answer": "a"}, {"answer": "boom"}, {"answer": "nan"}, {"answer": "b", "other": 1}]
    found = worker.score(NO_PROMPTS, ["r0", "r1", "r2", "r3"], columns)["flaky"]
    assert found.values == [1.0, 0.0, 0.0, 1.0]
    assert found.bad == [(1, "raised RuntimeError: boom!"), (2, "returned nan")]
    sources = [f"p.jsonl:{n}" for n in range(1, 5)]
    specs = [RewardFunctionConfig(callable=f"{__name__}:flaky", name="flaky")]
    with pytest.raises(RewardFunctionError, match=r"^reward function flaky \(tests.unit.test_reward_functions:flaky\) "
                                                  r"raised RuntimeError: boom! for the record from p.jsonl:2; "):
        judge(specs, {"flaky": found}, sources, on_error="fail")
    scores, errors = judge(specs, {"flaky": found}, sources, on_error="zero")
    assert scores["flaky"].tolist() == [1.0, 0.0, 0.0, 1.0] and errors == {"flaky": 2}


def test_a_function_gets_the_columns_it_names_or_all_of_them_with_kwargs():
    seen = {}

    def named(prompts, responses, answer):
        seen["named"] = answer
        return [0.0] * len(responses)

    def every(prompts, responses, **columns):
        seen["every"] = sorted(columns)
        return [0.0] * len(responses)

    worker = RewardFunctionWorker([])
    worker.functions = [("named", named, {}), ("every", every, {})]
    worker.score(NO_PROMPTS[:2], ["a", "b"], [{"answer": 1, "id": 7}, {"answer": 2}])
    assert seen == {"named": [1, 2], "every": ["answer", "id"]}
