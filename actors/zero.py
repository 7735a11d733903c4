"""DeepSpeed ZeRO plumbing shared by every trained role (SFT, reward model, PPO policy and value, DPO).

CPU ranks talk over gloo; the optimizer is a torch.optim.AdamW instance handed to DeepSpeed, which avoids
JIT-compiling DeepSpeed's CPU fused Adam (~65 s) and behaves the same on GPU.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from common.config import DeepSpeedConfig
from common.imports import heavy_imports


def ds_config(cfg: DeepSpeedConfig, micro_batch: int, grad_accum: int, max_grad_norm: float,
              world_size: int) -> dict:
    """The DeepSpeed JSON config for one trained role."""
    zero: dict = {"stage": cfg.stage}
    if cfg.stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if cfg.offload_optimizer and cfg.stage > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.stage == 3:
        # Gather whole parameters for export / weight sync instead of keeping 16-bit shards only.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return config


def plain_engine_fits(cfg: DeepSpeedConfig, world_size: int) -> bool:
    """Whether one rank trains on the plain engine (actors/plain_engine.py) instead of DeepSpeed's: one rank,
    where ZeRO partitions nothing, in fp32 without offload, unless deepspeed.single_rank says deepspeed."""
    return (cfg.single_rank == "plain" and world_size == 1 and cfg.precision == "fp32" and not cfg.offload_optimizer
            and not cfg.offload_param)


def adamw(params, lr: float, weight_decay: float, cfg: DeepSpeedConfig) -> torch.optim.AdamW:
    """The client optimizer of every trained role: torch's fused AdamW, which updates all parameters in a few
    kernels, on the GPU and on the CPU alike. Without it the CPU takes the one-tensor-at-a-time loop (torch picks
    foreach only on CUDA): about a dozen small ops per parameter, 2 of the tiny SFT step's ~80 ms; TRL's
    default optimizer is the fused one too. With offload_optimizer DeepSpeed moves the states after this is built,
    so that case keeps torch's default."""
    fused = not cfg.offload_optimizer
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), fused=fused or None)


def init_distributed() -> None:
    """Join the process group Ray Train (or our actor group) prepared; gloo on CPU, NCCL on GPU."""
    with heavy_imports():  # the rank's first DeepSpeed import (common/imports.py)
        import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def init_single_rank() -> None:
    """A process group of one for a rank that no group was formed for (DeepSpeed's engine needs one)."""
    import socket

    with heavy_imports():
        import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                      LOCAL_WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False,
                               rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")


def initialize(model, optimizer, scheduler, config: dict):
    """deepspeed.initialize with a client optimizer; returns the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=config, dist_init_required=False)
    return engine


@contextlib.contextmanager
def gathered(module: torch.nn.Module, stage: int, modifier_rank: int | None = None) -> Iterator[None]:
    """Full parameters of `module` visible inside the block (a no-op below ZeRO-3)."""
    if stage != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=modifier_rank):
        yield


def iter_full_parameters(module: torch.nn.Module, stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor on CPU) one parameter at a time: ZeRO-3 gathers each shard group just in time, so
    peak memory is one parameter, not the model (weight sync and export both stream through this)."""
    for name, param in module.named_parameters():
        if stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                yield name, param.detach().to("cpu", copy=True)
        else:
            yield name, param.detach().to("cpu", copy=True)


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum python floats over ranks (eval loss numerators and token counts)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":  # NCCL reduces device tensors only
            tensor = tensor.cuda()
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()
