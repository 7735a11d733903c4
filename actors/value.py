"""The value role: a causal-LM backbone with a scalar head, trained with the clipped value loss on its own
DeepSpeed ZeRO ranks (a separate process group from the policy's)."""

from __future__ import annotations

import torch

from actors import modeling, packed
from actors.algo import clipped_value_loss
from actors.protocol import TokenBatch, ValueBatch, row_chunks, to_device
from actors.trained_role import TrainedRole, reduce_stats
from common.imports import heavy_imports


class ValueModel(torch.nn.Module):
    """Backbone hidden states → one value per position. The head starts at zero so the first advantages are
    plain returns instead of noise from a random head."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=packed.for_attention(self.backbone, attention_mask),
                               position_ids=position_ids, use_cache=False).last_hidden_state
        return self.value_head(hidden.float()).squeeze(-1)


def action_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, pack: bool = False,
                  prompts: torch.Tensor | None = None) -> torch.Tensor:
    """[B, L-1]: the value of the state before each next token (aligned with the action space); over packed rows
    when `pack`, sharing prompts when `prompts` gives their lengths (actors/packed.py)."""
    return packed.run(model, input_ids, attention_mask, pack, prompts)[:, :-1]


def backbone_forward(model: ValueModel) -> packed.Forward:
    """The value model's backbone hidden states as a Forward."""
    def forward(input_ids, attention_mask, position_ids):
        return model.backbone(input_ids=input_ids, attention_mask=packed.for_attention(model.backbone, attention_mask),
                              position_ids=position_ids, use_cache=False).last_hidden_state
    return forward


def load_value_model(path: str, dtype: str) -> ValueModel:
    with heavy_imports():  # Transformers' import, seconds of CPU: common/imports.py
        from transformers import AutoModel

    folder = modeling.check_model_dir(path, need_tokenizer=False)
    backbone = AutoModel.from_pretrained(str(folder), dtype=modeling.DTYPES[dtype])
    return ValueModel(backbone, backbone.config.hidden_size)


class ValueRole(TrainedRole):
    role = "value"

    def setup(self) -> dict:
        model = load_value_model(self.ppo.value_init or self.start_model, self.model_cfg.dtype)
        engine = self._make_engine(model, self.ppo.value_lr)
        # The check runs on the backbone's hidden states: the zero-initialised head would make any two agree.
        layout = self._choose_layout(backbone_forward(self.engine.module), model.backbone.config)
        return {"value_params": sum(p.numel() for p in model.parameters()), "engine": engine, "layout": layout}

    @torch.no_grad()
    def values(self, batch: TokenBatch, chunk: int = 16) -> torch.Tensor:
        self.threads.use("values")
        self.engine.eval()
        batch = to_device(batch, self.engine.device)
        parts = []
        for part in row_chunks(batch, chunk):
            parts.append(action_values(self.engine, part.input_ids, part.attention_mask, self.pack,
                                       packed.prompts_of(part, self.share)))
        self.engine.train()
        return torch.cat(parts).cpu()

    def train(self, batch: ValueBatch, seed: int) -> dict:
        ppo = self.ppo
        self.threads.use("train")
        sums = {"loss": 0.0, "clip_frac": 0.0, "tokens": 0.0}
        skipped = 0
        batch = to_device(batch, self.engine.device)
        for mini in self.minibatches(batch, seed + 7):
            normalizer = self.global_tokens(mini.action_mask)
            values = action_values(self.engine, mini.input_ids, mini.attention_mask, self.pack,
                                   packed.prompts_of(mini, self.share))
            loss, stats = clipped_value_loss(values, mini.old_values, mini.returns, mini.action_mask,
                                             ppo.value_clip_range, normalizer=normalizer)
            local = float(mini.action_mask.sum())
            sums["loss"] += float(loss.detach()) * normalizer
            sums["clip_frac"] += float(stats["clip_frac"]) * local
            sums["tokens"] += local
            if not self.backward_step(loss):
                skipped += 1
        out = reduce_stats(sums)
        out["nan_skipped"] = skipped
        return {f"value/{k}": v for k, v in out.items()}
