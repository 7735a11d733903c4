"""What the PPO policy and value roles share: a DeepSpeed engine over their own ranks (one rank in fp32: the plain
engine with the same interface), the threads each call computes with, mini-batch iteration with a global
normaliser, NaN-safe optimizer steps, and checkpoints.

Loss scaling: each rank's loss is its tokens' loss sum divided by the token count of the whole mini-batch
across ranks, times the world size (DeepSpeed averages gradients over ranks). The result equals the
gradient of the whole-batch token mean however the batch is split, which the equivalence tests check.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch

from actors import modeling, packed, zero
from actors.algo.packing import grouped_order
from actors.group import DistributedRole
from actors.plain_engine import PlainEngine
from actors.protocol import select
from actors.threads import ThreadPlan
from common.config import DeepSpeedConfig, LoraConfig, ModelConfig, PPOConfig
from common.durable import sync_tree

log = logging.getLogger("rayalign.ppo")
CKPT_TAG = "zero"


class TrainedRole(DistributedRole):
    role = "trained"

    def __init__(self, model: ModelConfig, lora: LoraConfig, deepspeed: DeepSpeedConfig, ppo: PPOConfig,
                 start_model: str, seed: int, threads: ThreadPlan = ThreadPlan()):
        self.model_cfg, self.lora_cfg, self.deepspeed, self.ppo = model, lora, deepspeed, ppo
        self.start_model, self.seed, self.threads = start_model, seed, threads
        self.stage = deepspeed.stage
        self.engine = None
        self.pack = False  # ppo.pack_sequences, once setup has checked the model (actors/packed.py)
        self.share = False  # ppo.share_prompts, likewise

    @property
    def world(self) -> int:
        return zero.rank_and_world()[1]

    @property
    def rank(self) -> int:
        return zero.rank_and_world()[0]

    def _make_engine(self, model: torch.nn.Module, lr: float) -> str:
        """The role's training engine; returns which: "plain" (one rank, fp32, no offload, and
        deepspeed.single_rank=plain: actors/plain_engine.py) or "deepspeed"."""
        ppo, ds = self.ppo, self.deepspeed
        torch.manual_seed(self.seed)
        plain = zero.plain_engine_fits(ds, self.world)
        if plain:
            model.to(modeling.device())
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = zero.adamw(params, lr, 0.0, ds)
        if plain:
            self.engine = PlainEngine(model, optimizer, ppo.max_grad_norm)
            self.stage = 0  # nothing is partitioned: weight sync and export read the parameters as they are
            return "plain"
        zero.init_single_rank()
        config = zero.ds_config(ds, max(ppo.mini_batch_size // self.world, 1), 1, ppo.max_grad_norm, self.world)
        self.engine = zero.initialize(model, optimizer, None, config)
        return "deepspeed"

    def _choose_layout(self, forward, config) -> str:
        """Packs (ppo.pack_sequences) and shares prompts (ppo.share_prompts) where this role's model (of this
        Transformers config) gives the same outputs so as padded (actors/packed.py); returns the layout's name for
        the start-up line."""
        self.pack, self.share = packed.engine_layout(self.engine, forward, config, modeling.DTYPES[self.model_cfg.dtype],
                                                     self.role, self.ppo.pack_sequences, self.ppo.share_prompts)
        return packed.layout_name(self.pack, self.share)

    def engine_kind(self) -> str:
        return "plain" if isinstance(self.engine, PlainEngine) else "deepspeed"

    def set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def lr(self) -> float:
        """The learning rate the optimizer steps with (a rollback lowers it through set_lr)."""
        return self.engine.optimizer.param_groups[0]["lr"]

    def minibatches(self, batch, seed: int) -> Iterator:
        """ppo_epochs passes over this rank's shard in seeded random mini-batches of mini_batch_size/world; when
        sharing prompts, the sequences of one prompt stay side by side (the groups in random order) so that a
        mini-batch holds few prompts; where the mini-batch size is not a multiple of the group's, a group cut by a
        mini-batch boundary carries its prompt in both."""
        ppo = self.ppo
        size = batch.input_ids.shape[0]
        per_rank = max(ppo.mini_batch_size // self.world, 1)
        for epoch in range(ppo.ppo_epochs):
            generator = torch.Generator().manual_seed(seed * 1009 + epoch)
            order = grouped_order(batch.input_ids, packed.prompts_of(batch, True), generator) if self.share \
                else torch.randperm(size, generator=generator)
            for start in range(0, size, per_rank):
                yield select(batch, order[start:start + per_rank])

    def global_tokens(self, mask: torch.Tensor) -> float:
        return zero.all_reduce_sum([float(mask.sum())])[0]

    def backward_step(self, loss: torch.Tensor) -> bool:
        """Backward + optimizer step unless any rank's loss is NaN/Inf (then every rank skips). True if stepped."""
        bad = zero.all_reduce_sum([0.0 if torch.isfinite(loss).item() else 1.0])[0]
        if bad:
            self.engine.zero_grad()
            return False
        self.engine.backward(loss * self.world)
        self.engine.step()
        return True

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, folder: str) -> None:
        self.engine.save_checkpoint(str(Path(folder) / self.role), tag=CKPT_TAG)
        # On this rank's node: the driver's own sync (actors/ppo_checkpoints.py) reaches only its node's cache, and
        # a shared filesystem need not flush a file another node wrote. DeepSpeed's save ends on a barrier, so
        # every rank's shards are written by now.
        sync_tree(Path(folder) / self.role)

    def load(self, folder: str) -> None:
        path, _ = self.engine.load_checkpoint(str(Path(folder) / self.role), tag=CKPT_TAG)
        if path is None:
            raise FileNotFoundError(f"no {self.role} checkpoint under {folder}")


def reduce_stats(sums: dict[str, float], tokens_key: str = "tokens") -> dict[str, float]:
    """All-reduce token-weighted sums over ranks and turn them into means."""
    keys = sorted(sums)
    totals = dict(zip(keys, zero.all_reduce_sum([sums[k] for k in keys])))
    tokens = max(totals.pop(tokens_key), 1.0)
    return {k: v / tokens for k, v in totals.items()}
