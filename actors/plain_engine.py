"""A single-rank training engine with DeepSpeed's interface and a plain PyTorch step underneath.

On one rank ZeRO partitions nothing, yet DeepSpeed's engine still costs 1.37× (fp32) a plain optimizer step on
this machine's CPU, per tensor: gradient hooks, overflow checks, bucket copies (bench/deepspeed_overhead.py).
A PPO policy or value group of one rank, in fp32 without offload, therefore trains with this engine instead
(deepspeed.single_rank=plain; the start-up line says which engine each role got), and so does a one-worker SFT,
reward-model or DPO run. It offers exactly what those call on a DeepSpeed engine: forward, train/eval, backward
(scaled by 1/grad_accum, as DeepSpeed does), step (at each accumulation boundary: gradient clipping, AdamW, the
learning-rate schedule, zero_grad), the pre-clip global gradient norm, the learning rate, the optimizer's param
groups, and checkpoints with a client state (its own format: a run resumes with the engine it was saved by).
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.durable import publish, temp_path

CHECKPOINT_FILE = "plain_engine.pt"


class PlainEngine(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float,
                 grad_accum: int = 1, scheduler=None):
        super().__init__()
        self.module, self.optimizer, self.max_grad_norm = model, optimizer, max_grad_norm
        self.grad_accum, self.scheduler = grad_accum, scheduler
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._grad_norm: float | None = None
        self.micro_steps = 0

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()

    def step(self) -> None:
        """At an accumulation boundary: clip to max_grad_norm, step, advance the schedule, clear the gradients
        (what DeepSpeed's step does there); between boundaries only count the micro-step."""
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm))
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.zero_grad()

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def get_global_grad_norm(self) -> float | None:
        """The gradient norm of the last step, before clipping (as DeepSpeed reports it)."""
        return self._grad_norm

    def save_checkpoint(self, folder: str, tag: str, client_state: dict | None = None) -> None:
        target = Path(folder) / tag
        target.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(target / CHECKPOINT_FILE)
        torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                    "micro_steps": self.micro_steps, "client": client_state or {}}, tmp)
        publish(tmp, target / CHECKPOINT_FILE)

    def load_checkpoint(self, folder: str, tag: str) -> tuple[str | None, dict]:
        """(path, client state) as DeepSpeed returns them; (None, {}) when the folder holds no checkpoint of ours."""
        path = Path(folder) / tag / CHECKPOINT_FILE
        if not path.is_file():
            return None, {}
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]
        return str(path), state["client"]
