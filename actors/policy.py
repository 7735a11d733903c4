"""The policy role: the model being trained with PPO, on its own DeepSpeed ZeRO ranks.

It computes the log-probs of sampled responses (before the update: "old"; under the sampler's processed
distribution or at the rollout temperature, ppo.trainer_logprobs), trains with the clipped surrogate loss
(with an optional rollout correction against the engine's behaviour log-probs), streams its weights to the
rollout engines after each update, and exports the final model. With LoRA and `ppo.reference=adapter_disabled`
it also serves as its own reference.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch

from actors import modeling, packed, zero
from actors.algo import (
    LOSS_AGGREGATIONS,
    ROLLOUT_CORRECTIONS,
    clipped_policy_loss,
    entropy_from_logits,
    kl_loss_term,
    masked_sum,
)
from actors.algo.logprobs import picked_logprobs, positions_per_pass, spread
from actors.algo.sampling import finite_old, processed_logprobs_at
from actors.protocol import PolicyBatch, TokenBatch, row_chunks, to_device
from actors.scored import head_agrees, scored_logits
from actors.trained_role import TrainedRole, reduce_stats
from actors.weights import flatten_parameters, hf_named_weights
from common.config import RolloutConfig

log = logging.getLogger("rayalign.policy")


def response_logits(model, batch, pack: bool = False, share: bool = False, fused: bool = True) -> torch.Tensor:
    """[N, V] float32 logits at the batch's N response positions (action_mask, row-major), as the model gives
    them: over packed rows when `pack`, the answers to one prompt sharing it when `share` (actors/packed.py),
    the head run at those positions alone where `fused` allows (actors/scored.py, model.fused_loss)."""
    return scored_logits(model, batch.input_ids, batch.attention_mask, batch.action_mask.bool(), pack,
                         packed.prompts_of(batch, share), fused).float()


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits / temperature if temperature > 0 else logits


def ratio_logprobs(raw_logits: torch.Tensor, batch, rollout: RolloutConfig, mode: str) -> torch.Tensor:
    """[B, L-1] log-probs PPO's ratio is taken under (ppo.trainer_logprobs), from the response logits [N, V]:
    the sampler's processed distribution (actors/algo/sampling.py), or the temperature-scaled one; 0 off the
    response tokens."""
    if mode != "processed":
        return tempered_logprobs(raw_logits, batch, rollout.temperature)
    actions = batch.action_mask.bool()
    return spread(processed_logprobs_at(raw_logits, batch.input_ids, actions, rollout.temperature, rollout.top_p,
                                        rollout.repetition_penalty, attention_mask=batch.attention_mask), actions)


def tempered_logprobs(raw_logits: torch.Tensor, batch, temperature: float) -> torch.Tensor:
    """[B, L-1] log-probs of the response tokens at `temperature` from their logits [N, V]; 0 elsewhere."""
    actions = batch.action_mask.bool()
    return spread(picked_logprobs(scaled(raw_logits, temperature), batch.input_ids[:, 1:][actions]), actions)


def response_entropy(raw_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N] entropy at `temperature` of each response position's logits [N, V], positions_per_pass at a time: its
    temporaries (a few [n, V] float32 copies) stay bounded however long the responses."""
    per_pass = positions_per_pass(raw_logits.shape[-1])
    return torch.cat([entropy_from_logits(scaled(part, temperature).unsqueeze(0)).squeeze(0)
                      for part in raw_logits.split(per_pass)]) if len(raw_logits) else raw_logits.sum(dim=-1)


@torch.no_grad()
def sequence_logprobs(model, batch: TokenBatch, temperature: float, chunk: int = 16,
                      pack: bool = False, share: bool = False, fused: bool = True) -> torch.Tensor:
    """[B, L-1] log-prob of every response token at `temperature` (0 elsewhere), in chunks of rows: the
    distribution the KL to the reference compares."""
    return torch.cat([tempered_logprobs(response_logits(model, part, pack, share, fused), part, temperature)
                      for part in row_chunks(batch, chunk)])


class PolicyRole(TrainedRole):
    role = "policy"

    def setup(self) -> dict:
        model = modeling.trainable_causal_lm(self.model_cfg, self.lora_cfg, self.start_model)
        trainable, total = modeling.count_parameters(model)
        engine = self._make_engine(model, self.ppo.lr)
        if engine == "plain":
            flatten_parameters(model)  # one buffer: each weight-sync bucket is one buffer for Ray's put
        layout = self._choose_layout(packed.lm_forward(self.engine), model.config)
        # model.fused_loss, where this model's log-probs are the same so (actors/scored.py)
        self.fused = head_agrees(self.engine, model.config.vocab_size, self.engine.device,
                                 modeling.DTYPES[self.model_cfg.dtype], self.role, self.model_cfg.fused_loss)
        return {"trainable_params": trainable, "total_params": total, "engine": engine, "layout": layout,
                "scored_head": self.fused}

    def _temperature(self) -> float:
        return self.ppo.rollout.temperature

    def logprobs(self, batch: TokenBatch, disable_adapter: bool = False) -> torch.Tensor:
        """Temperature-scaled log-probs (the KL's distribution) for this rank's shard; with adapters disabled,
        the reference's."""
        self.threads.use("logprobs")
        self.engine.eval()
        context = self.engine.module.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with context:
            out = sequence_logprobs(self.engine, to_device(batch, self.engine.device), self._temperature(),
                                    pack=self.pack, share=self.share, fused=self.fused)
        self.engine.train()
        return out.cpu()

    @torch.no_grad()
    def old_logprobs(self, batch: TokenBatch, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """(ratio, kl) log-probs [B, L-1] of this rank's shard before the update, from one forward pass: the
        ratio's under ppo.trainer_logprobs, the KL's at the rollout temperature (the same tensor when
        trainer_logprobs=temperature)."""
        self.threads.use("old_logprobs")
        self.engine.eval()
        batch = to_device(batch, self.engine.device)
        ratio, kl = [], []
        for part in row_chunks(batch, chunk):
            raw = response_logits(self.engine, part, self.pack, self.share, self.fused)
            kl.append(tempered_logprobs(raw, part, self._temperature()))
            ratio.append(kl[-1] if self.ppo.trainer_logprobs == "temperature"
                         else ratio_logprobs(raw, part, self.ppo.rollout, "processed"))
        self.engine.train()
        return torch.cat(ratio).cpu(), torch.cat(kl).cpu()

    def raw_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        """Log-probs at temperature 1: what a vLLM engine holding the same weights reports."""
        self.engine.eval()
        out = sequence_logprobs(self.engine, to_device(batch, self.engine.device), 1.0, pack=self.pack,
                                share=self.share, fused=self.fused)
        self.engine.train()
        return out.cpu()

    def train(self, batch: PolicyBatch, seed: int, kl_loss_coef: float = 0.0) -> dict:
        """ppo_epochs × mini-batches of clipped-surrogate updates on this rank's shard; global stats.

        Each mini-batch: the rollout correction (ppo.rollout_correction) weights or masks its tokens, the loss is
        aggregated by ppo.loss_aggregation with a normaliser counted over the whole mini-batch (all ranks), and
        the KL-as-loss term (kl_loss_coef > 0) is a token mean over the temperature-scaled distributions."""
        ppo = self.ppo
        self.threads.use("train")
        aggregation = LOSS_AGGREGATIONS.get(ppo.loss_aggregation)
        correct = ROLLOUT_CORRECTIONS.get(ppo.rollout_correction)
        sums = {"clip_frac": 0.0, "approx_kl": 0.0, "dropped_share": 0.0, "entropy": 0.0, "tokens": 0.0}
        corrected = responded = 0.0  # tokens the rollout correction truncated or dropped, of all response tokens
        loss_weighted = loss_units = 0.0
        updates = skipped = 0
        grad_norms = []
        batch = to_device(batch, self.engine.device)
        for mini in self.minibatches(batch, seed):
            correction = correct(mini.old_logprobs, mini.behaviour_logprobs, mini.action_mask,
                                 ppo.rollout_correction_cap)
            mask = correction.mask
            old = finite_old(mini.old_logprobs, mini.behaviour_logprobs, mini.action_mask)
            normalizer, tokens = zero.all_reduce_sum([aggregation.units(mask), float(mask.sum())])
            raw = response_logits(self.engine, mini, self.pack, self.share, self.fused)
            logp_kl = tempered_logprobs(raw, mini, self._temperature())
            logp = logp_kl if ppo.trainer_logprobs == "temperature" else \
                ratio_logprobs(raw, mini, ppo.rollout, ppo.trainer_logprobs)
            loss, stats = clipped_policy_loss(logp, old, mini.advantages, mask, ppo.clip_range,
                                              ppo.dual_clip, normalizer=normalizer, aggregation=ppo.loss_aggregation,
                                              max_response_len=ppo.rollout.max_new_tokens,
                                              token_weights=correction.token_weights)
            if kl_loss_coef:
                loss = loss + kl_loss_term(logp_kl, mini.ref_logprobs, mask, kl_loss_coef, ppo.kl.per_token_estimator,
                                           normalizer=tokens)
            local = float(mask.sum())
            with torch.no_grad():
                sums["entropy"] += float(masked_sum(spread(response_entropy(raw, self._temperature()),
                                                           mini.action_mask.bool()), mask))
            # This rank's loss is its share of the mini-batch loss; weighting each share by the mini-batch's
            # units (this rank's part of them) makes the reduced figure the units-weighted mean of mini-batch
            # losses, the same number a single rank would report.
            loss_weighted += float(loss.detach()) * normalizer
            loss_units += normalizer / self.world
            sums["clip_frac"] += float(stats["clip_frac"]) * local
            sums["approx_kl"] += float(stats["approx_kl"]) * local
            sums["dropped_share"] += float(stats["dropped_share"]) * local
            corrected += float(correction.affected_share) * float(mini.action_mask.sum())
            responded += float(mini.action_mask.sum())
            sums["tokens"] += local
            if self.backward_step(loss):
                updates += 1
                grad_norms.append(self.grad_norm())
            else:
                skipped += 1
        out = reduce_stats(sums)  # means over the tokens the loss kept
        # The correction's share is of every response token: over the kept ones, dropping half would read 1.0.
        loss_weighted, loss_units, corrected, responded = zero.all_reduce_sum([loss_weighted, loss_units, corrected,
                                                                              responded])
        out["correction_share"] = corrected / max(responded, 1.0)
        out.update(loss=loss_weighted / max(loss_units, 1e-12), updates=updates, nan_skipped=skipped,
                   grad_norm=max(grad_norms) if grad_norms else float("nan"))
        return {f"policy/{k}": v for k, v in out.items()}

    def weight_buckets(self, bucket_mb: int) -> list:
        """Pack the full (LoRA-merged) weights bucket by bucket into Ray's object store (actors/weights.py,
        PackedBucket); rank 0 returns the refs. Under ZeRO-3 the other ranks take part in the gathers; below it
        rank 0 holds every weight and they have nothing to do."""
        import ray

        from actors.weights import borrowed_hf_weights, hf_tied_aliases

        module = self.engine.module
        if self._only_gathers():
            return []
        # Below ZeRO-3 every weight outlives its bucket's put, so none is staged (BucketPacker, `stable`).
        packed = self._packer(bucket_mb).pack(borrowed_hf_weights(module, self.stage), hf_tied_aliases(module),
                                              self.stage != 3)
        return [ray.put(bucket) for bucket in packed]

    def _only_gathers(self) -> bool:
        """Ranks other than 0 send nothing; under ZeRO-3 they take part in rank 0's gathers, weight by weight."""
        from actors.weights import borrowed_hf_weights

        if self.rank == 0:
            return False
        if self.stage == 3:
            for _ in borrowed_hf_weights(self.engine.module, self.stage):
                pass
        return True

    # ---- the collective path (ppo.weight_sync, actors/weight_collective.py) --------------------------------
    def weight_group_address(self, timeout_s: float) -> tuple[str, int]:
        """Rank 0: serve the weight-sync group's rendezvous; returns (address, port) for the engines."""
        from actors.weight_collective import open_store

        self._weight_store, self._weight_address, port = open_store(timeout_s)
        return self._weight_address, port

    def join_weight_group(self, world: int, backend: str, timeout_s: float, generation: int) -> int:
        """Rank 0: form the weight-sync group with the engines (they join at the same time)."""
        from actors.weight_collective import WeightGroup

        self.weight_group = None  # the last group's sockets close before the new one forms
        self.weight_group = WeightGroup(self._weight_store, 0, world, backend, timeout_s, generation,
                                        self._weight_address)
        return 0

    def send_weights(self, bucket_mb: int) -> int:
        """Broadcast the full (LoRA-merged) weights to the engines' group, bucket by bucket, each staged on the
        group's device; returns the bytes sent (0 on the other ranks, which only take part in ZeRO-3's
        gathers)."""
        from actors.weights import borrowed_hf_weights, hf_tied_aliases

        module = self.engine.module
        if self._only_gathers():
            return 0
        packer = self._packer(bucket_mb, self.weight_group.device)
        return self.weight_group.send(packer.pack(borrowed_hf_weights(module, self.stage), hf_tied_aliases(module)))

    def _packer(self, bucket_mb: int, device=None):
        """The BucketPacker for buckets of bucket_mb staged on `device` (None: the object store's host staging),
        kept from sync to sync so that its staging buffer stays warm."""
        from actors.weights import BucketPacker

        packers = self.__dict__.setdefault("_packers", {})  # PolicyRole keeps TrainedRole's __init__
        packer = packers.get(device)
        if packer is None or packer.bucket_bytes != bucket_mb * 2**20:
            packer = packers[device] = BucketPacker(bucket_mb * 2**20, device)
        return packer

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
