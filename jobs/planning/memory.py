"""The memory a role needs per rank, by term, from the model's shape and the recipe's settings (jobs.plan).

The estimate, per rank of each role, in bytes (N = model parameters, T = trained
parameters, D = ranks of the role, b = sequences per forward pass, s = tokens per sequence, h = hidden size,
L = layers, V = vocabulary):

  parameters   frozen weights N·w (w = 4 fp32, 2 bf16/fp16, 1 int8, 0.5 4-bit NF4; NF4's block constants, about
               0.016 B/param with double quantisation, are ignored) + trained weights T·p (p = 2 in bf16/fp16
               training, 4 in fp32). Full fine-tuning: all N are trained, N·p. ZeRO-3 divides by D; offload_param
               moves them to host memory.
  gradients    T·p; ZeRO-2 and -3 divide by D.
  optimizer    AdamW: T·12 in mixed precision (fp32 master copy + two fp32 moments), T·8 in fp32 (the weights are
               the master copy); ZeRO-1/2/3 divide by D; offload_optimizer moves them to host memory.
  activations  training: b·s·h·L·34 bytes in 16-bit (Korthikanti et al. 2022, eq. 2, without the 5·a·s/h
               attention-score term that fused attention never stores), doubled in fp32; with gradient
               checkpointing b·s·h·(2·L + 34): each layer's input plus one layer recomputed. Plus b·s·V·4 for the
               fp32 logits a language-model loss reads (not for reward models' scalar head); PPO's policy and
               reference with model.fused_loss run the head at the response tokens alone (actors/scored.py):
               b·n·V·4 for n = ppo.rollout.max_new_tokens (not a ZeRO-3 policy: its head is partitioned).
               Inference roles hold one layer at a time: b·s·h·34 (+ logits).
  KV cache     rollout engines: b·s·2·L·kv_heads·head_dim·w_kv (w_kv = 2 in 16-bit, 4 in fp32).

LoRA's trained share T comes from the shapes of the targeted projections: r·(in + out) per module per layer.
A role on GPUs must fit gpus_per_rank × gpu_memory × usable_memory_share per rank; roles on the CPU, and what
is offloaded, share the host memory of all nodes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from common.config import Config
from common.errors import ConfigError
from common.families import DEFAULT_FAMILY, lora_targets
from common.model_dir import check_model_dir, kv_bytes_per_token, text_config, text_shape

GIB = 2 ** 30
WEIGHT_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "int8": 1.0, "4bit": 0.5}
TRAIN_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
ADAM_BYTES = {"fp32": 8.0, "bf16": 12.0, "fp16": 12.0}
ACTIVATION_BYTES_16BIT = 34  # per token, per hidden unit, per layer
CHECKPOINTED_BYTES_16BIT = 2  # the layer input kept per layer under gradient checkpointing
LOGIT_BYTES = 4
INFERENCE_CHUNK = 16  # rows per forward pass of the reference actor (actors/policy.sequence_logprobs)

# ---- model shapes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    params: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    capped_logits: bool = False  # the head is more than a projection (soft-capping): its logits run everywhere

    def response_logits_only(self, fused_loss: bool) -> bool:
        """Whether PPO's policy and reference project the response tokens alone (actors/scored.py)."""
        return fused_loss and not self.capped_logits

    def projection_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer LoRA can target, Llama naming."""
        q, kv, h, m = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, m), "up_proj": (h, m), "down_proj": (m, h)}

    def describe(self) -> str:
        return (f"{self.params / 1e9:.3g}B params, {self.layers} layers, hidden {self.hidden}, {self.heads} heads "
                f"({self.kv_heads} KV), vocab {self.vocab}")


# Llama-2 shapes, with the nominal size as the parameter count so the plan's arithmetic can be checked by hand.
KNOWN_SHAPES = {
    7.0: ModelShape(7e9, 32, 4096, 32, 32, 128, 32000, 11008),
    13.0: ModelShape(13e9, 40, 5120, 40, 40, 128, 32000, 13824),
    70.0: ModelShape(70e9, 80, 8192, 64, 8, 128, 32000, 28672),
}


def parse_size(text: str) -> float:
    """'7B' → 7.0, '350M' → 0.35 (billions of parameters)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([bBmM])\s*", text)
    if not match:
        raise ConfigError(f"model size {text!r} must look like 7B, 13B, 70B or 350M")
    value = float(match.group(1)) / (1 if match.group(2) in "bB" else 1000)
    if value <= 0:
        raise ConfigError(f"model size {text!r} must be more than zero parameters")
    return value


def shape_for_size(size_b: float) -> ModelShape:
    """A known Llama-2 shape, else a Llama-like one from N ≈ 12·L·h² with L = h/128 (head dim 128), MLP 8h/3."""
    if size_b in KNOWN_SHAPES:
        return KNOWN_SHAPES[size_b]
    hidden = max(128, round((128 * size_b * 1e9 / 12) ** (1 / 3) / 128) * 128)
    intermediate = math.ceil(8 * hidden / 3 / 256) * 256
    return ModelShape(size_b * 1e9, hidden // 128, hidden, hidden // 128, hidden // 128, 128, 32000, intermediate)


def shape_from_checkpoint(path: str) -> ModelShape:
    """The shape of a local Hugging Face causal LM, parameters counted from its safetensors headers."""
    from actors.modeling import LOGIT_RESCALING
    from common.model_sizes import parameter_count_on_disk

    folder = check_model_dir(path, need_tokenizer=False)
    config = json.loads((folder / "config.json").read_text())
    shape, text = text_shape(config), text_config(config)
    if shape is None or "vocab_size" not in text:
        raise ConfigError(f"{folder / 'config.json'} does not give the model's layers, heads, width and vocabulary "
                          "(Llama-style or GPT-2-style names); pass --model-size or set model.size_b")
    # GPT-2-style configs name the MLP width n_inner, null for the usual 4 × width.
    intermediate = text.get("intermediate_size") or text.get("n_inner") or 4 * shape.hidden
    capped = any(text.get(field) for field in LOGIT_RESCALING)  # as modeling.fused_loss_head reads them
    return ModelShape(float(parameter_count_on_disk(folder)), shape.layers, shape.hidden, shape.heads, shape.kv_heads,
                      shape.head_dim, text["vocab_size"], intermediate, capped)


def model_shape(cfg: Config, size: str | None) -> ModelShape:
    """--model-size wins, then model.size_b, then the checkpoint at model.path."""
    if size is not None:
        return shape_for_size(parse_size(size))
    if cfg.model.size_b is not None:
        return shape_for_size(cfg.model.size_b)
    return shape_from_checkpoint(cfg.model.path)


def lora_trainable(shape: ModelShape, rank: int, targets: list[str]) -> int:
    """r·(in + out) per targeted projection per layer."""
    dims = shape.projection_dims()
    unknown = [t for t in targets if t not in dims]
    if unknown:
        raise ConfigError(f"lora.target_modules {unknown} have no known shape; the planner knows {sorted(dims)}")
    return shape.layers * sum(rank * sum(dims[t]) for t in targets)


# ---- memory per rank -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    """Bytes per rank on its device, by term, plus what ZeRO offload keeps in host memory instead."""
    parameters: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    offloaded: float = 0.0

    TERMS = ("parameters", "gradients", "optimizer", "activations", "kv_cache")

    @property
    def on_device(self) -> float:
        return sum(getattr(self, term) for term in self.TERMS)

    def largest_term(self) -> str:
        return max(self.TERMS, key=lambda term: getattr(self, term))


def trained_parameters(cfg: Config, shape: ModelShape, lora: bool) -> float:
    targets = lora_targets(cfg.lora.target_modules, DEFAULT_FAMILY)  # the planner sizes Llama shapes
    return float(lora_trainable(shape, cfg.lora.rank, targets)) if lora else shape.params


def training_memory(cfg: Config, shape: ModelShape, lora: bool, ranks: int, sequences: int, tokens: int,
                    logit_tokens: int | None = None, quantized: bool = True) -> Memory:
    """One DeepSpeed rank of a trained role (formulas in the module docstring); `logit_tokens` of each sequence's
    `tokens` meet the head (None: all of them; 0: none, a scalar head)."""
    ds = cfg.deepspeed
    trained = trained_parameters(cfg, shape, lora)
    p = TRAIN_BYTES[ds.precision]
    frozen_bytes = WEIGHT_BYTES[cfg.model.quantization if quantized and cfg.model.quantization != "none"
                                else cfg.model.dtype]
    parameters = shape.params * frozen_bytes + trained * p if lora else shape.params * p
    parameters /= ranks if ds.stage == 3 else 1
    gradients = trained * p / (ranks if ds.stage >= 2 else 1)
    optimizer = trained * ADAM_BYTES[ds.precision] / (ranks if ds.stage >= 1 else 1)
    scale = p / 2
    per_token = (shape.hidden * (CHECKPOINTED_BYTES_16BIT * shape.layers + ACTIVATION_BYTES_16BIT) * scale
                 if cfg.model.gradient_checkpointing else shape.hidden * shape.layers * ACTIVATION_BYTES_16BIT * scale)
    logits = sequences * (tokens if logit_tokens is None else logit_tokens) * shape.vocab * LOGIT_BYTES
    activations = sequences * tokens * per_token + logits
    offloaded = (parameters if ds.offload_param else 0.0) + (optimizer if ds.offload_optimizer else 0.0)
    return Memory(0.0 if ds.offload_param else parameters, gradients, 0.0 if ds.offload_optimizer else optimizer,
                  activations, 0.0, offloaded)


def inference_memory(cfg: Config, shape: ModelShape, sequences: int, tokens: int, logit_tokens: int | None = None,
                     quantized: bool = True) -> Memory:
    """A frozen model that only scores: its weights plus one layer's activations (+ the logits of `logit_tokens`
    of each sequence's tokens, as training_memory)."""
    dtype = cfg.model.quantization if quantized and cfg.model.quantization != "none" else cfg.model.dtype
    scale = WEIGHT_BYTES[cfg.model.dtype] / 2
    logits = sequences * (tokens if logit_tokens is None else logit_tokens) * shape.vocab * LOGIT_BYTES
    return Memory(parameters=shape.params * WEIGHT_BYTES[dtype],
                  activations=sequences * tokens * shape.hidden * ACTIVATION_BYTES_16BIT * scale + logits)


def rollout_memory(cfg: Config, shape: ModelShape, sequences: int, tokens: int) -> Memory:
    """A vLLM engine: weights in the model dtype (it does not load bitsandbytes) plus the KV cache. On a GPU it
    takes exactly ppo.rollout.gpu_memory_utilization of the card, whatever the batch: its KV cache is what that
    leaves after the weights (`rollout_kv_room` says how many sequences run at once). Elsewhere, the batch's KV."""
    w = WEIGHT_BYTES[cfg.model.dtype]
    weights = shape.params * w
    if gpu_engine(cfg):
        return Memory(parameters=weights, kv_cache=max(engine_reservation(cfg) - weights, 0.0))
    return Memory(parameters=weights, kv_cache=sequences * tokens * kv_per_token(shape, w))


def gpu_engine(cfg: Config) -> bool:
    return cfg.profile.gpu is not None and cfg.ppo.gpus_per_actor > 0


def engine_reservation(cfg: Config) -> float:
    """Bytes a CUDA vLLM engine takes: gpu_memory_utilization of the whole card, shared or not."""
    return cfg.ppo.rollout.gpu_memory_utilization * cfg.profile.gpu_memory_gib * GIB


def kv_per_token(shape: ModelShape, weight_bytes: float) -> float:
    return kv_bytes_per_token(shape.layers, shape.kv_heads, shape.head_dim, weight_bytes)
