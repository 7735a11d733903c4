"""The reference role: a frozen copy of the starting policy that only computes log-probs (for the KL)."""

from __future__ import annotations

import torch

from actors import modeling, packed
from actors.group import Located
from actors.policy import sequence_logprobs
from actors.protocol import TokenBatch, to_device
from actors.scored import head_agrees
from actors.threads import ThreadPlan
from common.config import ModelConfig, RolloutConfig


class ReferenceModel(Located):
    def __init__(self, model: ModelConfig, rollout: RolloutConfig, start_model: str,
                 threads: ThreadPlan = ThreadPlan(), pack: bool = False, share: bool = False):
        self.rollout, self.threads = rollout, threads
        self.model = modeling.load_causal_lm(model, start_model)
        self.model.eval().requires_grad_(False).to(modeling.device())
        # ppo.pack_sequences and ppo.share_prompts, where this model gives the same outputs so as padded
        # (actors/packed.py)
        self.pack, self.share = packed.choose_layout(packed.lm_forward(self.model), self.model.config,
                                                     modeling.device(), modeling.DTYPES[model.dtype], "reference",
                                                     pack, share)
        # The head at the response tokens alone (model.fused_loss), where the log-probs are the same so
        self.fused = head_agrees(self.model, self.model.config.vocab_size, modeling.device(),
                                 modeling.DTYPES[model.dtype], "reference", model.fused_loss)

    @torch.no_grad()
    def logprobs(self, batch: TokenBatch) -> torch.Tensor:
        self.threads.use("logprobs")
        batch = to_device(batch, modeling.device())
        return sequence_logprobs(self.model, batch, self.rollout.temperature, pack=self.pack, share=self.share,
                                 fused=self.fused).cpu()

    def ping(self) -> bool:
        return True
