"""The SFT training rank: a ZeroTrainer whose loss is the mean NLL per assistant token (`train_loop` is the
thin Ray Train shell). The loop, checkpoints, resume and export live in actors/zero_trainer.py."""

from __future__ import annotations

import logging

import torch

from actors import modeling, packed, zero
from actors.algo.fused_ce import linear_cross_entropy_sum
from actors.chat import IGNORE_INDEX, EncodedChat
from actors.protocol import to_device
from actors.scored import final_hidden, head_agrees
from actors.sft_data import SFTSplit, collate, collate_packed, pack_collated, packed_batches, packed_rows
from actors.zero_trainer import TrainingSetup, ZeroTrainer, balanced_share, run_rank, save_hf_model

log = logging.getLogger("rayalign.sft")


def causal_lm_loss_sums(model, batch: dict, fused: bool = True, chunk_size: int = 4096) -> tuple[torch.Tensor, int]:
    """(sum of token NLL over assistant tokens, number of those tokens) for one micro-batch: padded rows
    (`attention_mask`) or packed rows (`position_ids`, no mask; see actors.sft_data.collate_packed).

    With `fused`, when the model allows it (modeling.fused_loss_head), the loss runs from the final hidden
    states of the assistant tokens alone through the output projection in chunks (actors/scored.py): the model is
    asked for no logits at all, and the prompts' and the padding's positions never meet the head."""
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    head = modeling.fused_loss_head(model) if fused else None
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids") if key in batch}
    if head is not None:
        hidden = final_hidden(model, **inputs)[:, :-1]
        return linear_cross_entropy_sum(hidden[mask], head.weight, labels[mask], chunk_size), int(mask.sum())
    logits = model(**inputs, use_cache=False).logits
    logits = logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.clamp(min=0).reshape(-1),
                                            reduction="none").view_as(labels)
    return (nll * mask).sum(), int(mask.sum())


def micro_batch_tensors(batch: list, pad_id: int, data_packing: bool, pack: bool) -> dict:
    """One micro-batch collated: data.packing's rows of chats as packed (`pack`: the model passed the packing check),
    else their chats one per row, padded; without data.packing its chats padded, or laid end to end into rows of
    the batch's width (`pack`, sft.pack_sequences). Every layout gives the same loss sum where `pack` holds."""
    if data_packing and pack:
        return collate_packed(batch, pad_id)
    chats = [chat for row in batch for chat in row] if data_packing else batch
    tensors = collate(chats, pad_id)
    return pack_collated(tensors) if pack and not data_packing else tensors


class SFTWorker(ZeroTrainer):
    section = "sft"
    title = "SFT"
    unit = "tokens"

    def __init__(self, cfg: TrainingSetup, split: SFTSplit, pad_id: int, lr: float, output_dir: str, tokenizer_path: str):
        super().__init__(cfg, lr, output_dir)
        self.split, self.pad_id, self.tokenizer_path = split, pad_id, tokenizer_path
        self.pack = False  # sft.pack_sequences, once setup has checked the model (actors/packed.py)
        self.fused = False  # model.fused_loss: the head at the assistant tokens alone, likewise (actors/scored.py)

    def setup(self) -> None:
        super().setup()
        # data.packing's rows need what pack_sequences does (restarting position ids read as chat boundaries), so
        # either asks for the check: without it a model that attends across them would learn from its neighbours.
        self.pack, _ = packed.engine_layout(
            self.engine, packed.lm_forward(self.engine), self.engine.module.config,
            modeling.DTYPES[self.cfg.model.dtype], "sft", self.settings.pack_sequences or self.cfg.data.packing,
            share=False)
        if self.cfg.data.packing and not self.pack:
            log.warning("sft: data.packing is on, but this model reads packed rows across their chats' boundaries "
                        "(the check above): each row's chats run one per row, padded")
        self.fused = head_agrees(self.engine, self.engine.module.config.vocab_size, self.engine.device,
                                 modeling.DTYPES[self.cfg.model.dtype], "sft", self.cfg.model.fused_loss)

    def build_model(self) -> torch.nn.Module:
        return modeling.trainable_causal_lm(self.cfg.model, self.cfg.lora)

    def export_skeleton(self) -> torch.nn.Module:
        return modeling.trainable_causal_lm(self.cfg.model, self.cfg.lora, for_export=True)

    def train_size(self) -> int:
        return len(self.split.train)

    def epoch_batches(self, epoch: int) -> list:
        """Micro-batches of sft.micro_batch_size sequences: single chats of similar length, or (data.packing)
        rows of chats packed up to data.max_length tokens."""
        if not self.cfg.data.packing:
            return self.bucketed_share(self.split.train, epoch)
        rows = packed_rows(self.split.train, self.cfg.data.max_length, self.cfg.seed, epoch)
        return self.rank_share(packed_batches(rows, self.settings.micro_batch_size))

    def _chats(self, batch) -> list[EncodedChat]:
        return [ex for row in batch for ex in row] if self.cfg.data.packing else batch

    def count_units(self, batch) -> int:
        return sum(sum(1 for label in ex.labels[1:] if label != IGNORE_INDEX) for ex in self._chats(batch))

    def loss_sum(self, batch) -> torch.Tensor:
        tensors = micro_batch_tensors(batch, self.pad_id, self.cfg.data.packing, self.pack)
        total, _ = causal_lm_loss_sums(self.engine, to_device(tensors, self.engine.device), self.fused)
        return total

    def evaluate(self) -> dict[str, float]:
        """Held-out loss per assistant token, over all ranks' shares of the eval set."""
        self.engine.eval()
        nll, count = 0.0, 0
        share, real = balanced_share(self.split.eval, self.rank, self.world)
        # Padding items keep every rank's forward count equal (ZeRO-3 gathers collectively); no trained labels.
        share = share[:real] + [EncodedChat(ex.input_ids, [IGNORE_INDEX] * len(ex.labels)) for ex in share[real:]]
        with torch.no_grad():
            for start in range(0, len(share), self.settings.micro_batch_size):
                batch = to_device(collate(share[start:start + self.settings.micro_batch_size], self.pad_id),
                                  self.engine.device)
                total, n = causal_lm_loss_sums(self.engine, batch, self.fused)
                nll, count = nll + float(total), count + n
        self.engine.train()
        nll, count = zero.all_reduce_sum([nll, float(count)])
        return held_out_loss(nll, count)

    def save_export(self, model: torch.nn.Module, target) -> str:
        tokenizer = modeling.load_tokenizer(self.tokenizer_path, self.cfg.model.chat_template)
        return save_hf_model(model, tokenizer, target)


def train_loop(payload: dict) -> None:
    """Ray Train worker entry (thin shell): train, checkpoint, export."""
    import ray

    setup: TrainingSetup = payload["setup"]
    split = ray.get(payload["split_ref"]) if "split_ref" in payload else payload["split"]
    worker = SFTWorker(setup, split, payload["pad_id"], payload["lr"], payload["output_dir"], payload["tokenizer_path"])
    run_rank(worker, export=setup.settings.export)


def held_out_loss(nll: float, tokens: float) -> dict[str, float]:
    """{"eval_loss": mean negative log-likelihood per held-out assistant token}, or nothing without held-out tokens
    (data.eval_fraction=0): a loss of 0.0 there would read as a perfect model in the log, the figure and the end
    line."""
    return {"eval_loss": nll / tokens} if tokens > 0 else {}
