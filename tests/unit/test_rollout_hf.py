"""The Hugging Face rollout engine (the fallback where vLLM cannot be installed) on the tiny real policy:
its log-probs are the raw model's, greedy matches `generate`, weight loading takes effect, seeds reproduce,
and `ppo.rollout.engine` picks it only when asked or when vLLM is missing."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from actors.algo.sampling import processed_logprobs
from actors.rollout.engines import (FALLBACK_WARNING, rollout_engine_class, unknown_to_vllm, vllm_architectures,
                                    vllm_importable)
from actors.rollout.hf_engine import HFRolloutEngine
from actors.rollout.vllm_engine import RolloutEngine
from actors.weights import hf_named_weights
from common.config import RolloutConfig
from common.errors import ConfigError
from tests.conftest import POLICY_PATH

NEW_TOKENS = 12


def new_engine(seed: int = 7) -> HFRolloutEngine:
    return HFRolloutEngine(str(POLICY_PATH), RolloutConfig(max_new_tokens=NEW_TOKENS), seed, 256)


@pytest.fixture(scope="module")
def engine() -> HFRolloutEngine:
    return new_engine()


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Prompts of different lengths, so a batch is left-padded."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(POLICY_PATH))
    return [tokenizer(text)["input_ids"] for text in
            ["Once upon a time", "Lily and Tom went to the park.", "The cat", "A big red ball rolled down the hill"]]


@torch.no_grad()
def teacher_forced(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    logprobs = model(input_ids=ids).logits[0, len(prompt) - 1:-1].log_softmax(-1)
    return logprobs.gather(-1, ids[0, len(prompt):, None]).squeeze(-1)


def test_sampled_logprobs_are_those_of_the_distribution_that_sampled(engine, model, prompts):
    """What vLLM reports with logprobs_mode=processed_logprobs: each sampled token's log-prob after the
    repetition penalty (prompt and response so far), the temperature and top_p, not the raw model's."""
    cfg = engine.cfg
    samples = engine.generate(prompts)
    for prompt, sample in zip(prompts, samples):
        assert sample.prompt_ids == prompt
        # The tiny policy never emits EOS in a few tokens, so every row runs to the cap.
        assert len(sample.response_ids) == len(sample.response_logprobs) == NEW_TOKENS
        assert sample.finish_reason == "length"
        ids = torch.tensor([prompt + sample.response_ids])
        responses = torch.zeros(1, ids.shape[1] - 1)
        responses[0, len(prompt) - 1:] = 1
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]
        expected = processed_logprobs(logits, ids, cfg.temperature, cfg.top_p, cfg.repetition_penalty,
                                      action_mask=responses)[0, len(prompt) - 1:]
        reported = torch.tensor(sample.response_logprobs)
        assert torch.allclose(reported, expected, atol=1e-4)
        assert not torch.allclose(reported, teacher_forced(model, prompt, sample.response_ids), atol=1e-2)


def test_greedy_matches_hugging_face_generate(engine, model, prompts):
    greedy = engine.greedy(prompts, NEW_TOKENS)
    for prompt, ids in zip(prompts, greedy):
        ids_in = torch.tensor([prompt])
        reference = model.generate(ids_in, attention_mask=torch.ones_like(ids_in), do_sample=False,
                                   max_new_tokens=NEW_TOKENS, repetition_penalty=engine.cfg.repetition_penalty,
                                   pad_token_id=2)
        assert ids == reference[0, len(prompt):].tolist()


def test_loaded_weights_drive_sequence_logprobs(model, prompts):
    engine = new_engine()
    prompt, response = prompts[1], [342, 394, 261, 370, 268, 414]
    before = torch.tensor(engine.sequence_logprobs(prompt, response))
    assert torch.allclose(before, teacher_forced(model, prompt, response), atol=1e-5)
    perturbed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in perturbed.parameters():  # tied: the embedding and lm_head move together
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    # The sender's format: tied weights under both names, split over buckets.
    named = list(hf_named_weights(perturbed, stage=0))
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= {name for name, _ in named}
    assert engine.load_weights(named[:10], named[10:]) == len(named)
    after = torch.tensor(engine.sequence_logprobs(prompt, response))
    assert torch.allclose(after, teacher_forced(perturbed, prompt, response), atol=1e-5)
    assert (after - before).abs().max() > 1e-2
    with pytest.raises(KeyError, match="not_a_weight"):
        engine.load_weights([("not_a_weight", torch.zeros(1))])


def test_same_seed_and_call_count_reproduce_samples_and_the_next_call_differs(engine, prompts):
    engine.set_calls(5)
    first = engine.generate(prompts)
    resumed = new_engine()  # a restarted engine told how many calls the run had made
    resumed.set_calls(5)
    assert resumed.generate(prompts) == first
    assert engine.generate(prompts) != first  # call 7 draws from a new seed stream
    other_seed = new_engine(seed=8)
    other_seed.set_calls(5)
    assert other_seed.generate(prompts) != first


def test_a_draw_of_its_own_leaves_the_training_seed_stream_alone(prompts):
    """Dynamic sampling's extra rounds and sampled evaluation pass `draw`: the same draw repeats itself, and the
    next training call samples what it would have without the draw in between."""
    engine, untouched = new_engine(), new_engine()
    drawn = engine.generate(prompts, draw=1_000_001)
    assert engine.generate(prompts, draw=1_000_001) == drawn
    assert engine.generate(prompts) == untouched.generate(prompts) != drawn


def test_a_group_split_over_two_engines_draws_distinct_answers(prompts):
    """GRPO's four answers to one prompt, two per engine: each engine is told where its share starts in the
    step's batch, so the halves draw from different seeds; with the same start they would repeat each other."""
    group = [prompts[1]] * 4
    left, right = new_engine(), new_engine()
    answers = [a.response_ids for a in left.generate(group[:2], first_index=0)
               + right.generate(group[2:], first_index=2)]
    assert answers[2:] != answers[:2]
    whole = new_engine().generate(group)  # one engine sampling all four draws exactly the same answers
    assert [a.response_ids for a in whole] == answers
    same_start = new_engine().generate(group[2:], first_index=0)  # what both engines drew before first_index
    assert [a.response_ids for a in same_start] == answers[:2]


def test_auto_picks_vllm_where_it_imports():
    if not vllm_importable():
        pytest.skip("vLLM is not installed here")
    assert rollout_engine_class(RolloutConfig()) is RolloutEngine
    assert rollout_engine_class(RolloutConfig(engine="hf")) is HFRolloutEngine


def test_vllms_architecture_list_is_asked_once_per_version_then_read_from_the_cache(monkeypatch, tmp_path):
    """The driver no longer imports vLLM to choose the engine: the registry's answer is kept per vLLM version."""
    import json

    if not vllm_importable():
        pytest.skip("vLLM is not installed here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert "LlamaForCausalLM" in vllm_architectures()
    [cached] = (tmp_path / "rayalign").glob("vllm-architectures-*.json")
    assert "LlamaForCausalLM" in json.loads(cached.read_text())
    cached.write_text(json.dumps(["OnlyThisArchitecture"]))  # the next question is answered by the file
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert unknown_to_vllm(str(model)) == "LlamaForCausalLM"
    cached.write_text("{not json")  # a damaged cache is asked again and rewritten
    assert unknown_to_vllm(str(model)) is None


def test_auto_falls_back_to_hf_with_one_warning_where_vllm_is_missing(monkeypatch, caplog):
    monkeypatch.setattr("actors.rollout.engines.vllm_importable", lambda: False)
    with caplog.at_level(logging.WARNING, logger="rayalign.rollout"):
        assert rollout_engine_class(RolloutConfig(engine="auto")) is HFRolloutEngine
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [FALLBACK_WARNING]
    with pytest.raises(ConfigError, match="ppo.rollout.engine is 'vllm' but vLLM cannot be imported"):
        rollout_engine_class(RolloutConfig(engine="vllm"))
