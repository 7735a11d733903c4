"""The SFT training rank: a plain class run inside each Ray Train worker (`train_loop` is the thin shell).

One optimizer step = grad_accum micro-batches per rank through a DeepSpeed ZeRO engine. Rank 0 writes the
metrics; every rank takes part in checkpoints (ZeRO shards) which Ray Train persists under the run's
storage path, so re-running the same job resumes from the latest one.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from actors import modeling, zero
from actors.sft_data import SFTSplit, bucketed_batches, collate, shard_batches
from jobs.config import Config
from jobs.configlib import build
from jobs.metrics import MetricsLogger

log = logging.getLogger("rayalign.sft")
CKPT_TAG = "zero"


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    tokens: int = 0  # trained (assistant) tokens seen, all ranks


def causal_lm_loss_sums(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(sum of token NLL over assistant tokens, number of those tokens) for one micro-batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    mask = labels != -100
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.clamp(min=0).reshape(-1),
                                            reduction="none").view_as(labels)
    return (nll * mask).sum(), int(mask.sum())


class SFTWorker:
    def __init__(self, cfg: Config, split: SFTSplit, pad_id: int, lr: float, output_dir: str):
        self.cfg, self.split, self.pad_id, self.lr = cfg, split, pad_id, lr
        self.output_dir = Path(output_dir)
        self.rank, self.world = zero.rank_and_world()
        self.progress = Progress()
        self.stage = cfg.deepspeed.stage

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import get_cosine_schedule_with_warmup

        zero.init_distributed()
        self.rank, self.world = zero.rank_and_world()
        torch.manual_seed(self.cfg.run.seed)
        model = modeling.load_causal_lm(self.cfg.model)
        if self.cfg.lora.enabled:
            model = modeling.apply_lora(model, self.cfg.lora, quantized=self.cfg.model.quantization != "none")
        self.trainable, self.total = modeling.count_parameters(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.cfg.sft.weight_decay, betas=(0.9, 0.95))
        self.total_steps = self._total_steps()
        warmup = int(self.total_steps * self.cfg.sft.warmup_ratio)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.total_steps)
        config = zero.ds_config(self.cfg.deepspeed, self.cfg.sft.micro_batch_size, self.cfg.sft.grad_accum,
                                self.cfg.sft.max_grad_norm, self.world)
        self.engine = zero.initialize(model, optimizer, scheduler, config)
        self.metrics = MetricsLogger(self.output_dir) if self.rank == 0 else None

    def _epoch_batches(self, epoch: int) -> list:
        batches = bucketed_batches(self.split.train, self.cfg.sft.micro_batch_size, self.cfg.run.seed, epoch)
        return shard_batches(batches, self.rank, self.world, self.cfg.sft.grad_accum)

    def _total_steps(self) -> int:
        per_epoch = len(self._epoch_batches(0)) // self.cfg.sft.grad_accum
        if per_epoch == 0:
            raise ValueError(f"{len(self.split.train)} training chats are too few for micro_batch_size="
                             f"{self.cfg.sft.micro_batch_size} × grad_accum={self.cfg.sft.grad_accum} × "
                             f"{self.world} workers")
        total = per_epoch * self.cfg.sft.epochs
        return min(total, self.cfg.sft.max_steps) if self.cfg.sft.max_steps else total

    # ---- checkpoints -------------------------------------------------------------------------------
    def resume(self, checkpoint) -> None:
        """Load the engine state + progress from a Ray Train checkpoint (all ranks)."""
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            _, client = self.engine.load_checkpoint(folder, tag=CKPT_TAG)
        self.progress = Progress(**client["progress"])
        if self.metrics is not None:
            self.metrics.truncate_after(self.progress.step)
        if self.rank == 0:
            log.warning("resumed SFT from step %d (epoch %d)", self.progress.step, self.progress.epoch)

    def save(self, metrics: dict) -> None:
        import ray.train

        folder = tempfile.mkdtemp(prefix=f"sft-ckpt-r{self.rank}-")
        self.engine.save_checkpoint(folder, tag=CKPT_TAG, client_state={"progress": vars(self.progress)})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"step_{self.progress.step:06d}")
        shutil.rmtree(folder, ignore_errors=True)

    # ---- training ----------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Held-out loss per assistant token, over all ranks' shares of the eval set."""
        self.engine.eval()
        nll, count = 0.0, 0
        share = self.split.eval[self.rank::self.world]
        with torch.no_grad():
            for start in range(0, len(share), self.cfg.sft.micro_batch_size):
                batch = collate(share[start:start + self.cfg.sft.micro_batch_size], self.pad_id)
                total, n = causal_lm_loss_sums(self.engine, batch)
                nll, count = nll + float(total), count + n
        self.engine.train()
        nll, count = zero.all_reduce_sum([nll, float(count)])
        return nll / max(count, 1.0)

    def train_step(self, micro_batches: list) -> dict:
        """One optimizer step; the loss is the mean NLL per assistant token over the whole global batch."""
        started = time.perf_counter()
        local_tokens = sum(sum(1 for label in ex.labels[1:] if label != -100) for b in micro_batches for ex in b)
        global_tokens = zero.all_reduce_sum([float(local_tokens)])[0]
        loss_sum = 0.0
        for batch_examples in micro_batches:
            batch = collate(batch_examples, self.pad_id)
            total, _ = causal_lm_loss_sums(self.engine, batch)
            # DeepSpeed averages gradients over ranks and divides by grad_accum; scaling by the global token
            # count undoes both so every assistant token weighs the same whatever rank or micro-batch holds it.
            loss = total * (self.world * self.cfg.sft.grad_accum / global_tokens)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += float(total.detach())
        loss_mean = zero.all_reduce_sum([loss_sum])[0] / global_tokens
        elapsed = time.perf_counter() - started
        self.progress.step += 1
        self.progress.tokens += int(global_tokens)
        return {"loss": loss_mean, "lr": self.engine.get_lr()[0], "grad_norm": _grad_norm(self.engine),
                "tokens_per_s": global_tokens / elapsed, "step_seconds": elapsed}

    def run(self, checkpoint=None) -> dict:
        from tqdm import tqdm

        self.resume(checkpoint)
        sft = self.cfg.sft
        bar = tqdm(total=self.total_steps, initial=self.progress.step, desc="sft", disable=self.rank != 0,
                   mininterval=2.0)
        if self.progress.step == 0:
            self._log(0, {"eval_loss": self.evaluate(), "trainable_params": self.trainable,
                          "total_params": self.total, "trainable_share": self.trainable / self.total})
        last = {}
        while self.progress.step < self.total_steps:
            batches = self._epoch_batches(self.progress.epoch)
            steps_in_epoch = len(batches) // sft.grad_accum
            done_in_epoch = self.progress.step - self._steps_before_epoch(self.progress.epoch)
            for index in range(done_in_epoch, steps_in_epoch):
                if self.progress.step >= self.total_steps:
                    break
                last = self.train_step(batches[index * sft.grad_accum:(index + 1) * sft.grad_accum])
                step = self.progress.step
                if step % sft.eval_every == 0 or step == self.total_steps:
                    last["eval_loss"] = self.evaluate()
                if step % sft.log_every == 0 or "eval_loss" in last:
                    self._log(step, last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                if step % sft.save_every == 0 and step < self.total_steps:
                    self.save({"step": step, **last})
            if self.progress.step < self.total_steps:
                self.progress.epoch += 1
        bar.close()
        return last

    def _steps_before_epoch(self, epoch: int) -> int:
        return sum(len(self._epoch_batches(e)) // self.cfg.sft.grad_accum for e in range(epoch))

    def _log(self, step: int, metrics: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(step, {"epoch": self.progress.epoch, "tokens_seen": self.progress.tokens, **metrics})

    # ---- export ------------------------------------------------------------------------------------
    def export(self, tokenizer_path: str) -> str | None:
        """Merged Hugging Face model in <output>/model (LoRA adapters folded in); written atomically."""
        state = {}
        for name, tensor in zero.iter_full_parameters(self.engine.module, self.stage):
            if self.rank == 0:
                state[name] = tensor
        if self.rank != 0:
            return None
        skeleton = modeling.load_causal_lm(self.cfg.model)
        if self.cfg.lora.enabled:
            skeleton = modeling.apply_lora(skeleton, self.cfg.lora)
        missing, unexpected = skeleton.load_state_dict(state, strict=False)
        if unexpected or any(not _is_tied(name) for name in missing):
            raise RuntimeError(f"export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        merged = skeleton.merge_and_unload() if self.cfg.lora.enabled else skeleton
        return save_hf_model(merged, tokenizer_path, self.output_dir / "model", self.cfg.model.chat_template)

    def finish(self, final_metrics: dict) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _is_tied(name: str) -> bool:
    return name.endswith("lm_head.weight")


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else math.nan


def save_hf_model(model, tokenizer_path: str, target: Path, chat_template: str | None = None) -> str:
    """save_pretrained + the tokenizer (with its chat template) into a temp folder, then rename into place."""
    tokenizer = modeling.load_tokenizer(tokenizer_path, chat_template)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return str(target)


def train_loop(payload: dict) -> None:
    """Ray Train worker entry (thin shell): rebuild the config, train, checkpoint, export."""
    import ray
    import ray.train

    from jobs.config import Config as ConfigClass

    cfg = build(ConfigClass, payload["config"])
    split = ray.get(payload["split_ref"]) if "split_ref" in payload else payload["split"]
    worker = SFTWorker(cfg, split, payload["pad_id"], payload["lr"], payload["output_dir"])
    worker.setup()
    final = worker.run(ray.train.get_checkpoint())
    exported = worker.export(payload["tokenizer_path"]) if cfg.sft.export else None
    worker.finish(final)
    if worker.rank == 0:
        (Path(payload["output_dir"]) / "final_metrics.json").write_text(
            json.dumps({"step": worker.progress.step, "exported": exported, **final}, indent=2))
    ray.train.report({"step": worker.progress.step, "done": 1, **{k: v for k, v in final.items()
                                                                   if isinstance(v, (int, float))}})
