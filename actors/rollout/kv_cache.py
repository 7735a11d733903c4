"""How much memory a CPU rollout engine gives its KV cache.

vLLM's CPU build reserves the whole configured KV cache at start-up and zeroes it: 1 GiB by default, 0.2 s of page
faults here before the first rollout, and a gibibyte of resident memory per engine for the life of the run. A PPO
engine never holds more than the sequences of one rollout call at once (its share of rollout_batch_size ×
samples_per_prompt; dynamic sampling's extra rounds and multi-turn episodes' turns are calls of the same size), each
at most max_model_len tokens. So, with ppo.rollout.kv_cache_fit, the cache is sized to that: the tiny recipe's
engine reserves 64 MiB instead of 1 GiB. A larger call (the held-out evaluation's greedy answers, when there are
more evaluation prompts than that) still runs: vLLM queues the requests that do not fit.

Bytes per token are what vLLM's attention layers store: a key and a value of head_dim numbers per KV head per layer
(2 × layers × kv_heads × head_dim × dtype bytes). Each sequence is rounded up to whole blocks of the largest block
size a CPU attention backend uses, and one sequence more is reserved for the block vLLM holds back. Models whose
layers store less (sliding-window or linear-attention layers) get more than they need, never less; a config without
these fields gets the whole kv_cache_gib.
"""

from __future__ import annotations

import json
from pathlib import Path

from actors.modeling import DTYPES
from common.model_dir import kv_bytes_per_token, text_shape

GIB = 1 << 30
MIN_BYTES = 64 << 20  # a floor: small models get room to spare for the cost of zeroing 64 MiB (~13 ms)
LARGEST_BLOCK = 256  # tokens per KV block of the CPU backends (128 on this build; 256 for some models)


def bytes_per_token(config: dict, dtype: str) -> int | None:
    """KV-cache bytes one token takes in every attention layer, from a Hugging Face config.json (its text model's
    for a multimodal one); None when the config does not name its layers, heads and width."""
    shape = text_shape(config)
    return None if shape is None else int(kv_bytes_per_token(shape.layers, shape.kv_heads, shape.head_dim,
                                                         DTYPES[dtype].itemsize))


def fitted_bytes(per_token: int | None, max_model_len: int, sequences: int, cap_gib: int) -> int:
    """The KV-cache bytes for `sequences` sequences of up to max_model_len tokens each, between MIN_BYTES and
    cap_gib (the cap when bytes per token are unknown)."""
    cap = cap_gib * GIB
    if per_token is None:
        return cap
    whole_blocks = -(-max_model_len // LARGEST_BLOCK) * LARGEST_BLOCK
    return min(cap, max(MIN_BYTES, (sequences + 1) * whole_blocks * per_token))


def kv_cache_bytes(model_path: str, dtype: str, max_model_len: int, sequences: int | None, cap_gib: int) -> int:
    """What a CPU engine for `model_path` reserves: fitted to `sequences` when given, else the whole cap."""
    if sequences is None:
        return cap_gib * GIB
    config = json.loads((Path(model_path) / "config.json").read_text())
    return fitted_bytes(bytes_per_token(config, dtype), max_model_len, sequences, cap_gib)
