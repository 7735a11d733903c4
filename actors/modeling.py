"""Loading models and tokenizers from local Hugging Face folders, and wrapping them for training.

Everything loads from a path on disk (no hub access at run time). A missing or malformed folder gets one
clear error that names the folder and what is missing; QLoRA / int8 on a machine without CUDA is refused
with the reason instead of failing deep inside bitsandbytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from common.config import LoraConfig, ModelConfig
from common.errors import ModelDirError, QuantizationUnavailable
from common.families import lora_targets, names_module
from common.imports import heavy_imports
from common.model_dir import check_model_dir

log = logging.getLogger("rayalign.modeling")

# Used when a tokenizer ships no chat template (e.g. base models such as stories260K). Plain role
# prefixes, EOS after every assistant reply so generation learns to stop.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'tool' %}Tool: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(path: str | Path, chat_template: str | None = None):
    """Tokenizer with a pad token and a chat template guaranteed.

    A tokenizer without a pad token gets its EOS (padding positions are masked out of every loss, so the
    choice only has to be a valid id); one without a chat template gets `chat_template` or the default.
    """
    with heavy_imports():  # Transformers' import, seconds of CPU: common/imports.py
        from transformers import AutoTokenizer

    folder = check_model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for broken tokenizer files
        raise ModelDirError(f"cannot load the tokenizer in {folder}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if chat_template is not None or not tokenizer.chat_template:
        tokenizer.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
    return tokenizer


def quantization_config(cfg: ModelConfig):
    """bitsandbytes config for int8 / 4-bit NF4 (QLoRA) loading, or None; refuses without CUDA."""
    if cfg.quantization == "none":
        return None
    if not torch.cuda.is_available():
        raise QuantizationUnavailable(
            f"model.quantization={cfg.quantization} needs a CUDA GPU (bitsandbytes); this machine has none. "
            f"Use model.quantization=none (optionally with lora.enabled=true) on CPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise QuantizationUnavailable(
            f"model.quantization={cfg.quantization} needs bitsandbytes: pip install 'rayalign[gpu]'") from exc
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def device() -> torch.device:
    """Where this process computes: its GPU when Ray (or the launcher) gave it one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def load_causal_lm(cfg: ModelConfig, path: str | Path | None = None):
    """A causal LM from a local folder in the configured dtype / quantisation."""
    with heavy_imports():
        from transformers import AutoModelForCausalLM

    folder = check_model_dir(path or cfg.path, need_tokenizer=False)
    quant = quantization_config(cfg)
    kwargs = {"dtype": DTYPES[cfg.dtype], "attn_implementation": cfg.attn_implementation}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": torch.cuda.current_device()})
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelDirError(f"cannot load a causal LM from {folder}: {exc}") from exc
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.compile:
        compile_decoder_layers(model)
    return model


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer in place (regional compilation, as torchtitan does).

    Identical layers share one compiled graph, so compiling costs about one layer's time, and
    `Module.compile` keeps parameter names, state dicts and DeepSpeed's hooks as they were. Fuses the
    norm / rotary / SiLU·gate element-wise work that dominates small-hidden models. Returns layers compiled."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        layer.compile()
    log.info("compiled %d decoder layers with torch.compile", len(layers))
    return len(layers)


# Config fields of a model whose logits are more than its head's product (soft-capping, a scale): read here and by
# the memory planner (jobs/planning/memory.py), which then counts every position's logits.
LOGIT_RESCALING = ("final_logit_softcapping", "logit_scale")


def fused_loss_head(model) -> torch.nn.Linear | None:
    """The output projection when the LM loss may be computed from the final hidden states through it in
    chunks (actors/algo/fused_ce.py), else None and callers take the plain logits path.

    None when: the head is not a plain bias-free Linear (LoRA on lm_head, a value head), its weight is
    partitioned by ZeRO-3 (only gathered inside the module's own forward), or the model rescales its
    logits (soft-capping, logit_scale), which the plain product would miss."""
    module = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    if hasattr(module, "peft_config"):
        module = module.get_base_model()
    get_head = getattr(module, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if type(head) is not torch.nn.Linear or head.bias is not None or hasattr(head.weight, "ds_id"):
        return None
    config = getattr(module, "config", None)
    if any(getattr(config, field, None) for field in LOGIT_RESCALING):
        return None
    return head


def apply_lora(model, cfg: LoraConfig, quantized: bool = False, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with LoRA adapters on cfg.target_modules (unset: the family's attention projections)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    family = getattr(getattr(model, "config", None), "model_type", None)
    targets = lora_targets(cfg.target_modules, family)
    modules = [name for name, _ in model.named_modules() if name]
    missing = [m for m in targets if not any(names_module(m, name) for name in modules)]
    if missing:
        present = {name.rsplit(".", 1)[-1] for name in modules}
        raise ValueError(f"lora.target_modules {missing} are not modules of this {family or 'unknown-family'} model "
                         f"(it has e.g. {sorted(present)[:12]})")
    shared = tied_embedding_modules(model)
    tied = [m for m in targets if any(names_module(m, path) for path in shared)]
    if tied:
        # PEFT adapts one side of the shared matrix (the input embedding or the head), so training sees two
        # different matrices, while the merged export and the rollout engines hold one: the model trained is not
        # the model shipped (PEFT's merge adds the delta to both sides).
        raise ValueError(f"lora.target_modules {tied}: this model ties its input embedding and output head (one "
                         f"matrix), and an adapter on one side cannot be merged back into a tied model; leave them "
                         f"out of lora.target_modules, or train every weight (lora.enabled=false)")
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=targets, task_type=task_type, bias="none")
    return get_peft_model(model, peft_cfg)


def tied_embedding_modules(model) -> set[str]:
    """The dotted paths of the modules that share the input embedding's matrix (e.g. model.embed_tokens and
    lm_head in a model with tie_word_embeddings); empty when nothing shares it."""
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if get_input is not None else None
    shared = getattr(embedding, "weight", None)
    names = {name for name, module in model.named_modules()
             if shared is not None and getattr(module, "weight", None) is shared}
    return names if len(names) > 1 else set()


def trainable_causal_lm(model_cfg: ModelConfig, lora_cfg: LoraConfig, path: str | Path | None = None,
                        for_export: bool = False):
    """The causal LM a training role optimises: the base, wrapped with LoRA adapters when enabled. An export
    skeleton skips k-bit training preparation: it only receives the trained weights and is merged."""
    model = load_causal_lm(model_cfg, path)
    if not lora_cfg.enabled:
        return model
    return apply_lora(model, lora_cfg, quantized=model_cfg.quantization != "none" and not for_export)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Full weights of a (possibly LoRA-wrapped) model with adapters merged in, keyed as the base model."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
