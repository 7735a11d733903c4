"""What differs between model families, in one place: the modules LoRA adapts by default (lora.target_modules
unset), read from a checkpoint's config.json `model_type`. Everything else a family brings (its chat template, its
special and pad tokens) travels with its tokenizer; actors/modeling.py fills in a pad token and the default chat
template where a tokenizer has none."""

from __future__ import annotations

# model_type → attention projections that get adapters (fused where the family fuses them)
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj"],  # q, k and v in one fused projection
    # Fused q/k/v (Conv1D) and the attention's output projection; the MLP's is also named c_proj, so the
    # attention's is named by its path (a target matches a module whose dotted name ends with it, as in PEFT).
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "bert": ["query", "key", "value"],  # sentence encoders such as all-MiniLM-L6-v2 (reward backbones)
}
DEFAULT_FAMILY = "llama"


def names_module(target: str, module: str) -> bool:
    """Whether LoRA target `target` names the module at dotted path `module` (PEFT's rule: the whole path, or its
    end after a dot: 'c_proj' names both of GPT-2's, 'attn.c_proj' the attention's alone)."""
    return module == target or module.endswith("." + target)


def lora_targets(configured: list[str] | None, model_type: str | None) -> list[str]:
    """lora.target_modules when set; else the family's default (a family not in the table gets Llama's names,
    and apply_lora names the family and the modules it has when they do not exist)."""
    if configured is not None:
        return list(configured)
    return list(LORA_TARGETS.get(model_type or DEFAULT_FAMILY, LORA_TARGETS[DEFAULT_FAMILY]))


def model_type_of(folder) -> str | None:
    """config.json's model_type of a Hugging Face folder (None when it has none)."""
    from common.model_dir import config_json

    return config_json(folder).get("model_type")
