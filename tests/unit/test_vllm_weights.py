"""Which layout a CPU vLLM engine keeps its weights in (ppo.rollout.cpu_weights; actors/rollout/vllm_weights.py):
auto's choice from the model's config.json and dtype. The layouts themselves are checked in a real engine
(tests/ray/test_rollout_engines.py, tests/ray/test_ppo_roles.py)."""

from __future__ import annotations

import json

import pytest

from actors.rollout.vllm_weights import PLAIN_UP_TO_HIDDEN, plain_layout
from tests.conftest import POLICY_PATH


def model_folder(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def llama(hidden: int) -> dict:
    return {"num_hidden_layers": 8, "num_attention_heads": hidden // 64, "hidden_size": hidden}


def test_an_explicit_choice_is_kept_whatever_the_model():
    assert plain_layout("plain", str(POLICY_PATH), "bfloat16") is True
    assert plain_layout("packed", str(POLICY_PATH), "float32") is False


def test_auto_keeps_plain_weights_for_the_tiny_fp32_policy_only():
    assert plain_layout("auto", str(POLICY_PATH), "float32") is True  # hidden 64
    assert plain_layout("auto", str(POLICY_PATH), "bfloat16") is False  # not measured: packed


@pytest.mark.parametrize("hidden, plain", [(PLAIN_UP_TO_HIDDEN, True), (PLAIN_UP_TO_HIDDEN + 64, False), (512, False)])
def test_auto_draws_the_line_at_the_measured_hidden_size(tmp_path, hidden, plain):
    assert plain_layout("auto", model_folder(tmp_path, **llama(hidden)), "float32") is plain


def test_auto_packs_a_model_whose_width_it_cannot_read(tmp_path):
    assert plain_layout("auto", model_folder(tmp_path, model_type="unknown"), "float32") is False
    assert plain_layout("auto", str(tmp_path / "no-such-folder"), "float32") is False
