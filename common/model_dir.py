"""Is this folder a loadable Hugging Face model? Checked from the files alone (nothing is loaded), so a job can
refuse a wrong path before Ray starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.errors import ModelDirError
from common.paths import resolve_path

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "tokenizer_config.json")


def check_model_dir(path: str | Path, need_tokenizer: bool = True, what: str = "model.path") -> Path:
    """The resolved folder, or ModelDirError naming it, what is missing, and the config key `what` to fix."""
    folder = resolve_path(path)
    if not folder.is_dir():
        raise ModelDirError(f"model folder {folder} does not exist (set {what} to a local Hugging Face folder)")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelDirError(f"model folder {folder} has no config.json; is it a Hugging Face model folder?")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{config} is not valid JSON: {exc}") from None
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise ModelDirError(f"model folder {folder} has no weights (*.safetensors or pytorch_model*.bin)")
    if need_tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelDirError(f"model folder {folder} has no tokenizer files (tokenizer.json / tokenizer.model)")
    return folder


def config_json(folder: str | Path) -> dict:
    """A Hugging Face folder's config.json ({} when the folder has none)."""
    config = Path(folder) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


# Where Hugging Face configs keep the context length: most families, GPT-2, a few others.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def context_length(folder: str | Path) -> int | None:
    """The model's context in tokens from its config.json, or None when the config names none."""
    config = json.loads((Path(folder) / "config.json").read_text())
    return next((config[key] for key in CONTEXT_KEYS if isinstance(config.get(key), int)), None)


@dataclass(frozen=True)
class TextShape:
    """The text model's attention shape, as a Hugging Face config.json gives it."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, itemsize: float) -> float:
    """KV-cache bytes one token takes: a key and a value of head_dim numbers per KV head per layer (the engine's
    cache sizing and the planner both count with this)."""
    return 2 * layers * kv_heads * head_dim * itemsize


def text_config(config: dict) -> dict:
    """The text model's part of a config.json (a multimodal model nests it under text_config)."""
    return config.get("text_config") or config


def text_shape(config: dict) -> TextShape | None:
    """Layers, width and heads from a config.json under Llama-style or GPT-2-style names, its text model's for a
    multimodal one; None when it does not name its layers, heads and width (or head_dim)."""
    text = text_config(config)
    layers = text.get("num_hidden_layers", text.get("n_layer"))
    heads = text.get("num_attention_heads", text.get("n_head"))
    width = text.get("hidden_size", text.get("n_embd"))
    if not (layers and heads and (width or text.get("head_dim"))):
        return None
    head_dim = text.get("head_dim") or width // heads
    return TextShape(layers, width or heads * head_dim, heads, text.get("num_key_value_heads") or heads, head_dim)
