"""Where a run writes and runs, and the model it trains: run, ray, model, lora and deepspeed sections."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from common.configlib import param
from common.errors import ConfigError
from common.paths import resolve_path

DEFAULT_POLICY = "../shared/models/stories260K-hd32"


@dataclass(frozen=True)
class RunConfig:
    name: str = param("rayalign", "run name: outputs go to <output_root>/<name>/<stage>")
    output_root: str = param("outputs", "folder that holds every run's outputs")
    seed: int = param(42, "seed for data order, sampling and initialisation", ge=0)

    def run_dir(self) -> Path:
        return resolve_path(self.output_root) / self.name

    def output_dir(self, stage: str) -> Path:
        return self.run_dir() / stage


@dataclass(frozen=True)
class RayConfig:
    address: Optional[str] = param(None, "Ray cluster to join (e.g. 'auto' or 'ray://host:10001'); "
                                         "unset: RAY_ADDRESS, else an embedded local cluster on loopback")
    num_cpus: Optional[int] = param(None, "CPUs for the embedded cluster (unset: all)", gt=0)
    connect_timeout_s: float = param(30.0, "give up joining a cluster after this many seconds", gt=0)
    namespace: str = param("rayalign", "Ray namespace for named actors")
    include_dashboard: bool = param(False, "start the Ray dashboard with the embedded cluster")
    autoscaling: bool = param(False, "the cluster joined by address adds nodes on demand (Ray's autoscaler, KubeRay): "
                                     "a PPO placement plan the live nodes cannot hold is reserved anyway, and Ray "
                                     "starts nodes for it within ppo.placement.timeout_s; off: such a plan is refused "
                                     "at once, naming what is missing (an embedded cluster never grows)")


@dataclass(frozen=True)
class ModelConfig:
    path: str = param(DEFAULT_POLICY, "local Hugging Face model folder (config.json + weights + tokenizer)")
    dtype: Literal["float32", "bfloat16", "float16"] = param("float32", "compute dtype of the weights")
    quantization: Literal["none", "int8", "4bit"] = param(
        "none", "load the base weights in int8 or 4-bit (QLoRA) with bitsandbytes; CUDA only")
    size_b: Optional[float] = param(None, "model size in billions of parameters for the learning-rate rule "
                                          "(unset: counted from the checkpoint)", gt=0)
    chat_template: Optional[str] = param(None, "Jinja chat template to use when the tokenizer has none "
                                               "(unset: rayalign's plain 'User:/Assistant:' template)")
    gradient_checkpointing: bool = param(False, "recompute activations in backward to save memory")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = param(
        "sdpa", "attention kernel: PyTorch scaled_dot_product_attention (flash / memory-efficient on CUDA), "
                "the eager reference, or the flash-attn package")
    compile: bool = param(False, "torch.compile each decoder layer (faster steps on CUDA after a one-off compile)")
    fused_loss: bool = param(True, "run the output projection at the scored tokens' final hidden states alone (PPO's "
                                   "response tokens, DPO's replies, SFT's assistant turns; the SFT loss in chunks), "
                                   "where a start-up check finds the same log-probs: never the full [tokens × vocab] "
                                   "logits (off: the model's own logits at every position; actors/scored.py)")


@dataclass(frozen=True)
class LoraConfig:
    enabled: bool = param(False, "train LoRA adapters instead of all weights (forced on by 4-bit QLoRA)")
    rank: int = param(64, "LoRA rank r", gt=0)
    alpha: int = param(16, "LoRA alpha (scaling = alpha / rank)", gt=0)
    dropout: float = param(0.05, "dropout on the LoRA input", ge=0.0, lt=1.0)
    target_modules: Optional[list[str]] = param(
        None, "module names (or ends of dotted paths, as PEFT matches them) that get adapters; unset: the model "
              "family's attention projections (common/families.py: q/k/v/o_proj for Llama, Mistral, Qwen and Gemma, "
              "qkv_proj/o_proj for Phi-3, attn.c_attn/attn.c_proj for GPT-2, query/key/value for BERT-style "
              "encoders)")


@dataclass(frozen=True)
class DeepSpeedConfig:
    stage: int = param(2, "ZeRO stage: 0 (plain DDP), 1, 2 or 3", ge=0, le=3)
    offload_optimizer: bool = param(False, "keep optimizer states in CPU memory (ZeRO-Offload)")
    offload_param: bool = param(False, "keep parameters in CPU memory (ZeRO-3 only)")
    precision: Literal["fp32", "bf16", "fp16"] = param("fp32", "training precision")
    single_rank: Literal["plain", "deepspeed"] = param(
        "plain", "a PPO policy or value group of one rank, where ZeRO partitions nothing: plain trains it with a "
                 "PyTorch AdamW step behind DeepSpeed's interface (actors/plain_engine.py), without DeepSpeed's "
                 "per-tensor cost; deepspeed keeps the DeepSpeed engine. bf16/fp16 and offload always use DeepSpeed")

    def check(self) -> None:
        if self.offload_param and self.stage != 3:
            raise ConfigError(f"offload_param needs stage 3, got stage {self.stage}")
