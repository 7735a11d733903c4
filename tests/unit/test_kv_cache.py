"""The CPU rollout engine's KV-cache size (actors/rollout/kv_cache.py), against hand computations."""

from __future__ import annotations

import json

from actors.rollout.kv_cache import GIB, MIN_BYTES, bytes_per_token, fitted_bytes, kv_cache_bytes
from tests.conftest import POLICY_PATH

MIB = 1 << 20


def test_bytes_per_token_counts_a_key_and_a_value_per_kv_head_per_layer():
    llama = json.loads((POLICY_PATH / "config.json").read_text())  # 5 layers, 4 KV heads (of 8) of width 32
    assert bytes_per_token(llama, "float32") == 2 * 5 * 4 * 32 * 4 == 5120
    assert bytes_per_token(llama, "bfloat16") == 2560
    gpt2 = {"n_layer": 2, "n_head": 4, "n_embd": 64}  # no KV-head count: every head; head width 64 / 4
    assert bytes_per_token(gpt2, "float32") == 2 * 2 * 4 * 16 * 4
    multimodal = {"text_config": {"num_hidden_layers": 3, "num_attention_heads": 2, "hidden_size": 32}}
    assert bytes_per_token(multimodal, "float16") == 2 * 3 * 2 * 16 * 2
    assert bytes_per_token({"model_type": "mystery"}, "float32") is None


def test_fitted_bytes_hold_the_sequences_plus_one_in_whole_blocks_between_the_floor_and_the_cap():
    per_token = 32 * 1024
    # 32 sequences of 184 tokens round up to 256-token blocks: (32 + 1) × 256 × 32 KiB = 264 MiB
    assert fitted_bytes(per_token, 184, 32, 1) == 33 * 256 * per_token == 264 * MIB
    assert fitted_bytes(per_token, 257, 32, 1) == 33 * 512 * per_token  # one token past a block: two blocks
    assert fitted_bytes(5120, 184, 32, 1) == MIN_BYTES  # 43 MB asked: the 64 MiB floor
    assert fitted_bytes(per_token, 184, 1000, 2) == 2 * GIB  # 8 GiB asked: the cap
    assert fitted_bytes(None, 184, 32, 3) == 3 * GIB  # unknown layout: the whole cap


def test_an_engine_without_a_sequence_count_takes_the_whole_cap():
    assert kv_cache_bytes(str(POLICY_PATH), "float32", 184, None, 2) == 2 * GIB
    assert kv_cache_bytes(str(POLICY_PATH), "float32", 184, 100, 2) == 101 * 256 * 5120


def test_each_engine_is_started_with_its_share_of_a_steps_sequences():
    """role_args hands every engine the sequences one rollout call sends it: 8 prompts × 4 answers over 2 engines
    (the config holds the split even)."""
    from actors.ppo_roles import episode_tokens, role_args
    from common.config import load_config
    from tests.conftest import TINY_CPU

    cfg = load_config(TINY_CPU, ["ppo.rollout_batch_size=8", "ppo.samples_per_prompt=4", "ppo.rollout.num_engines=2"])
    model, rollout, seed, max_len, dtype, sequences, threads = role_args(cfg, str(POLICY_PATH))["rollout"]
    assert (sequences, max_len) == (16, episode_tokens(cfg.ppo) + 8)
    assert rollout.kv_cache_fit and dtype == cfg.model.dtype
    assert threads.threads("generate", cores=8) == 4  # and the cores they sample on: 8 over 2 engines
