"""The policy role: the model being trained with PPO, on its own DeepSpeed ZeRO ranks.

It computes the log-probs of sampled responses (before the update: "old"), trains with the clipped
surrogate loss, streams its weights to the rollout engines after each update, and exports the final model.
With LoRA and `ppo.reference=adapter_disabled` it also serves as its own reference.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from actors import modeling
from actors.algo import clipped_policy_loss, entropy_from_logits, kl_loss_term, masked_sum, token_logprobs
from actors.protocol import PolicyBatch, TokenBatch, to_device
from actors.trained_role import TrainedRole, reduce_stats
from actors.weights import buckets, hf_named_weights

log = logging.getLogger("rayalign.policy")


def action_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits for positions 0..L-2 (each predicting the next token), divided by the sampling temperature so
    log-probs are those of the distribution the rollout engine sampled from."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    return logits / temperature if temperature > 0 else logits


@torch.no_grad()
def sequence_logprobs(model, batch: TokenBatch, temperature: float, chunk: int = 16) -> torch.Tensor:
    """[B, L-1] log-prob of every next token (meaningful where action_mask is 1), in chunks of rows."""
    parts = []
    for start in range(0, batch.input_ids.shape[0], chunk):
        ids = batch.input_ids[start:start + chunk]
        logits = action_logits(model, ids, batch.attention_mask[start:start + chunk], temperature)
        parts.append(token_logprobs(logits, ids[:, 1:]))
    return torch.cat(parts)


class PolicyRole(TrainedRole):
    role = "policy"

    def setup(self) -> dict:
        model = modeling.trainable_causal_lm(self.model_cfg, self.lora_cfg, self.start_model)
        trainable, total = modeling.count_parameters(model)
        self._make_engine(model, self.ppo.lr)
        return {"trainable_params": trainable, "total_params": total}

    def _temperature(self) -> float:
        return self.ppo.rollout.temperature

    def logprobs(self, batch: TokenBatch, disable_adapter: bool = False) -> torch.Tensor:
        """Old log-probs (or, adapters disabled, the reference's) for this rank's shard."""
        self.engine.eval()
        context = self.engine.module.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with context:
            out = sequence_logprobs(self.engine, to_device(batch, self.engine.device), self._temperature())
        self.engine.train()
        return out.cpu()

    def raw_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """Log-probs at temperature 1: what a vLLM engine holding the same weights reports."""
        self.engine.eval()
        out = sequence_logprobs(self.engine, to_device(batch, self.engine.device), 1.0)
        self.engine.train()
        return out.cpu()

    def train(self, batch: PolicyBatch, seed: int, kl_loss_coef: float = 0.0) -> dict:
        """ppo_epochs × mini-batches of clipped-surrogate updates on this rank's shard; global stats."""
        ppo = self.ppo
        sums = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "entropy": 0.0, "tokens": 0.0}
        updates = skipped = 0
        grad_norms = []
        batch = to_device(batch, self.engine.device)
        for mini in self.minibatches(batch, seed):
            normalizer = self.global_tokens(mini.action_mask)
            logits = action_logits(self.engine, mini.input_ids, mini.attention_mask, self._temperature())
            logp = token_logprobs(logits, mini.input_ids[:, 1:])
            loss, stats = clipped_policy_loss(logp, mini.old_logprobs, mini.advantages, mini.action_mask,
                                              ppo.clip_range, ppo.dual_clip, normalizer=normalizer)
            if kl_loss_coef:
                loss = loss + kl_loss_term(logp, mini.ref_logprobs, mini.action_mask, kl_loss_coef,
                                           ppo.kl.estimator, normalizer=normalizer)
            local = float(mini.action_mask.sum())
            with torch.no_grad():
                sums["entropy"] += float(masked_sum(entropy_from_logits(logits), mini.action_mask))
            sums["loss"] += float(loss.detach()) * normalizer
            sums["clip_frac"] += float(stats["clip_frac"]) * local
            sums["approx_kl"] += float(stats["approx_kl"]) * local
            sums["tokens"] += local
            if self.backward_step(loss):
                updates += 1
                grad_norms.append(self.grad_norm())
            else:
                skipped += 1
        out = reduce_stats(sums)
        # Each rank added its share of the global loss × normaliser; the reduced mean is the mean of the
        # mini-batch losses weighted by tokens, the same number a single rank would report.
        out.update(updates=updates, nan_skipped=skipped,
                   grad_norm=max(grad_norms) if grad_norms else float("nan"))
        return {f"policy/{k}": v for k, v in out.items()}

    def weight_buckets(self, bucket_mb: int) -> list:
        """Gather the full (LoRA-merged) weights bucket by bucket into Ray's object store; rank 0 returns the
        refs, the other ranks only take part in the gathers."""
        import ray

        refs = []
        for bucket in buckets(hf_named_weights(self.engine.module, self.stage), bucket_mb * 2**20):
            if self.rank == 0:
                refs.append(ray.put(bucket))
        return refs

    def export(self, target: str, tokenizer_path: str) -> str | None:
        """The current policy as a Hugging Face model folder (written atomically by rank 0)."""
        from actors.zero_trainer import save_hf_model

        state = {name: tensor for name, tensor in hf_named_weights(self.engine.module, self.stage)}
        if self.rank != 0:
            return None
        skeleton = modeling.load_causal_lm(self.model_cfg, self.start_model)
        skeleton.load_state_dict(state, strict=True)  # a name mismatch fails loudly here, not at load time
        tokenizer = modeling.load_tokenizer(tokenizer_path, self.model_cfg.chat_template)
        return save_hf_model(skeleton, tokenizer, Path(target))
