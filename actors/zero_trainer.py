"""One DeepSpeed ZeRO training rank inside Ray Train, shared by SFT, the reward model and DPO.

The skeleton owns everything that does not depend on what is trained: the engine (AdamW + cosine schedule
with warm-up), the step loop with its eval / log / save cadence and progress bar, Ray Train checkpoints and
resume (metrics after the resumed step are dropped so they are logged once), and streaming export of the full
weights; the driver-side launch is actors/train_driver.py. A rank gets the config sections it reads as a
TrainingSetup. A role subclasses `ZeroTrainer`, names its config section (whose fields micro_batch_size,
grad_accum, epochs, max_steps, warmup_ratio, weight_decay, max_grad_norm, eval_every, save_every, log_every,
num_workers, use_gpu, cpus_per_worker and max_failures drive the loop and `fit`; see SFTConfig /
RewardModelConfig) and fills in the hooks:

    build_model()            the module to train (already LoRA-wrapped if wanted)
    train_size()             training examples available (for the 'too little data' message)
    epoch_batches(epoch)     this rank's micro-batches for an epoch (same count on every rank)
    count_units(batch)       loss units in a micro-batch (assistant tokens for SFT, pairs for the reward model)
    loss_sum(batch)          the loss summed over those units, computed through self.engine
    evaluate()               held-out metrics, reduced over ranks, keys starting with "eval_"
    save_export(model, dir)  write the merged model (and tokenizer) as a Hugging Face folder
    export_skeleton()        only when the model that receives the weights differs from build_model()
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
from actors.plain_engine import PlainEngine
from actors.sft_data import bucketed_batches, shard_batches
from actors.threads import node_cores
from actors.stop_flag import stop_flag
from common.config import (Config, DataConfig, DeepSpeedConfig, DPOConfig, LoraConfig, ModelConfig, RewardModelConfig,
                           SFTConfig)
from common.durable import fsync_folder, sync_tree, write_atomically
from common.imports import heavy_imports
from common.metrics import MetricsLogger

log = logging.getLogger("rayalign.train")
CKPT_TAG = "zero"


@dataclass(frozen=True)
class TrainingSetup:
    """The config sections a Ray Train rank reads, picked on the driver (frozen dataclasses pickle through Ray)."""
    settings: SFTConfig | RewardModelConfig | DPOConfig  # the loop's own section (see the module docstring)
    model: ModelConfig
    lora: LoraConfig
    deepspeed: DeepSpeedConfig
    seed: int
    data: DataConfig | None = None  # SFT only: packing and max_length

    @classmethod
    def of(cls, cfg: Config, section: str) -> TrainingSetup:
        return cls(getattr(cfg, section), cfg.model, cfg.lora, cfg.deepspeed, cfg.run.seed,
                   cfg.data if section == "sft" else None)


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    seen: int = 0  # loss units (tokens, pairs) trained on, all ranks


class ZeroTrainer:
    section = "train"  # the config section holding the loop settings; also names the progress bar
    title = "training"  # for people, in log lines
    unit = "examples"  # what the loss averages over: metrics '<unit>_per_s' and '<unit>_seen'

    preempted = False  # set when a stop request ended training early (after a checkpoint)

    def __init__(self, cfg: TrainingSetup, lr: float, output_dir: str):
        self.cfg, self.lr = cfg, lr
        self.settings = cfg.settings
        self.output_dir = Path(output_dir)
        self.rank, self.world = zero.rank_and_world()
        self.progress = Progress()
        self.stage = cfg.deepspeed.stage
        self._stop_query = None  # rank 0's question to the stop flag, sent after the last step (_stop_requested)

    # ---- hooks -------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def epoch_batches(self, epoch: int) -> list:
        raise NotImplementedError

    def count_units(self, batch) -> int:
        raise NotImplementedError

    def rank_share(self, batches: list) -> list:
        """This rank's micro-batches of an epoch's `batches`, dealt step by step (actors/sft_data.shard_batches)."""
        return shard_batches(batches, self.rank, self.world, self.settings.grad_accum)

    def bucketed_share(self, examples: list, epoch: int, length=None) -> list:
        """This rank's micro-batches of the epoch's length-bucketed `examples` (actors/sft_data.bucketed_batches),
        each step's ranks × grad_accum batches neighbours in length, so no rank waits long on another."""
        extra = {} if length is None else {"length": length}
        batches = bucketed_batches(examples, self.settings.micro_batch_size, self.cfg.seed, epoch,
                                   together=self.world * self.settings.grad_accum, **extra)
        return self.rank_share(batches)

    def loss_sum(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def train_size(self) -> int:
        raise NotImplementedError

    def export_skeleton(self) -> torch.nn.Module:
        """A fresh model of the trained architecture that the gathered weights are loaded into."""
        return self.build_model()

    def save_export(self, model: torch.nn.Module, target: Path) -> str:
        raise NotImplementedError

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        with heavy_imports():  # Transformers' first import in the worker (common/imports.py)
            from transformers import get_cosine_schedule_with_warmup

        zero.init_distributed()
        self.rank, self.world = zero.rank_and_world()
        # Ray Train gives each worker OMP_NUM_THREADS=cpus_per_worker; the ranks of one node share its cores.
        torch.set_num_threads(max(1, node_cores() // _local_world_size()))
        torch.manual_seed(self.cfg.seed)
        model = self.build_model()
        self.trainable, self.total = modeling.count_parameters(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = zero.adamw(params, self.lr, self.settings.weight_decay, self.cfg.deepspeed)
        self.total_steps = self._total_steps()
        warmup = int(self.total_steps * self.settings.warmup_ratio)
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, self.total_steps)
        if zero.plain_engine_fits(self.cfg.deepspeed, self.world):
            model.to(modeling.device())
            self.engine = PlainEngine(model, optimizer, self.settings.max_grad_norm, self.settings.grad_accum,
                                      scheduler)
            self.stage = 0  # nothing is partitioned: the export reads the parameters as they are
        else:
            config = zero.ds_config(self.cfg.deepspeed, self.settings.micro_batch_size, self.settings.grad_accum,
                                    self.settings.max_grad_norm, self.world)
            self.engine = zero.initialize(model, optimizer, scheduler, config)
        self.metrics = MetricsLogger(self.output_dir) if self.rank == 0 else None

    def _total_steps(self) -> int:
        per_epoch = len(self.epoch_batches(0)) // self.settings.grad_accum
        if per_epoch == 0:
            raise ValueError(f"{self.train_size()} training examples are too few for {self.section}.micro_batch_size="
                             f"{self.settings.micro_batch_size} × {self.section}.grad_accum="
                             f"{self.settings.grad_accum} × {self.world} workers")
        total = per_epoch * self.settings.epochs
        return min(total, self.settings.max_steps) if self.settings.max_steps else total

    # ---- checkpoints -------------------------------------------------------------------------------
    def resume(self, checkpoint) -> None:
        """Load the engine state + progress from a Ray Train checkpoint (all ranks)."""
        if checkpoint is None:
            if self.metrics is not None:
                self.metrics.truncate_after(-1)  # a worker-group restart before any checkpoint logs from step 0 again
            return
        with checkpoint.as_directory() as folder:
            _, client = self.engine.load_checkpoint(folder, tag=CKPT_TAG)
        self.progress = Progress(**client["progress"])
        if self.metrics is not None:
            self.metrics.truncate_after(self.progress.step)
        if self.rank == 0:
            log.warning("resumed %s from step %d (epoch %d)", self.title, self.progress.step, self.progress.epoch)

    def save(self, metrics: dict) -> None:
        import ray.train

        folder = tempfile.mkdtemp(prefix=f"{self.section}-ckpt-r{self.rank}-")
        self.engine.save_checkpoint(folder, tag=CKPT_TAG, client_state={"progress": vars(self.progress)})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=f"step_{self.progress.step:06d}")
        shutil.rmtree(folder, ignore_errors=True)

    # ---- training ----------------------------------------------------------------------------------
    def train_step(self, micro_batches: list) -> dict:
        """One optimizer step; the loss is the mean per unit over the whole global batch."""
        started = time.perf_counter()
        local_units = sum(self.count_units(batch) for batch in micro_batches)
        global_units = zero.all_reduce_sum([float(local_units)])[0]
        loss_sum = 0.0
        for batch in micro_batches:
            total = self.loss_sum(batch)
            # DeepSpeed averages gradients over ranks and divides by grad_accum; scaling by the global unit
            # count undoes both so every unit weighs the same whatever rank or micro-batch holds it.
            loss = total * (self.world * self.settings.grad_accum / global_units)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += float(total.detach())
        loss_mean = zero.all_reduce_sum([loss_sum])[0] / global_units
        elapsed = time.perf_counter() - started
        self.progress.step += 1
        self.progress.seen += int(global_units)
        return {"loss": loss_mean, "lr": self.engine.get_lr()[0], "grad_norm": _grad_norm(self.engine),
                f"{self.unit}_per_s": global_units / elapsed, "step_seconds": elapsed}

    def run(self, checkpoint=None) -> dict:
        from tqdm import tqdm

        self.resume(checkpoint)
        settings = self.settings
        bar = tqdm(total=self.total_steps, initial=self.progress.step, desc=self.section, disable=self.rank != 0,
                   mininterval=2.0)
        if self.progress.step == 0:
            self._log(0, {**self.evaluate(), "trainable_params": self.trainable, "total_params": self.total,
                          "trainable_share": self.trainable / self.total})
        last = {}
        while self.progress.step < self.total_steps:
            batches = self.epoch_batches(self.progress.epoch)
            steps_in_epoch = len(batches) // settings.grad_accum
            done_in_epoch = self.progress.step - self._steps_before_epoch(self.progress.epoch)
            for index in range(done_in_epoch, steps_in_epoch):
                if self.progress.step >= self.total_steps:
                    break
                last = self.train_step(batches[index * settings.grad_accum:(index + 1) * settings.grad_accum])
                step = self.progress.step
                evaluated = step % settings.eval_every == 0 or step == self.total_steps
                if evaluated:
                    last.update(self.evaluate())
                if step % settings.log_every == 0 or evaluated:
                    self._log(step, last)
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                saved = step % settings.save_every == 0 and step < self.total_steps
                if saved:
                    self.save({"step": step, **last})
                if step < self.total_steps and self._stop_requested():
                    if not saved:
                        self.save({"step": step, **last})
                    self.preempted = True
                    bar.close()
                    return last
            if self.progress.step < self.total_steps:
                self.progress.epoch += 1
        bar.close()
        return last

    def _stop_requested(self) -> bool:
        """Whether the driver asked to stop (SIGTERM); rank 0 asks the flag actor and every rank gets its answer
        through one all-reduce, so all ranks stop after the same step and checkpoint together. Rank 0 reads the
        answer to the question it sent after the previous step and sends the next at once: the actor's round trip
        overlaps a step instead of holding every rank at this all-reduce (a few ms of a ~80 ms tiny SFT step), and a
        stop lands one step later."""
        import ray

        asked = 0.0
        if self.rank == 0:
            flag = stop_flag(self.output_dir)
            if flag is not None:
                if self._stop_query is not None:
                    asked = float(ray.get(self._stop_query))
                self._stop_query = flag.requested.remote()
        return zero.all_reduce_sum([asked])[0] > 0

    def _steps_before_epoch(self, epoch: int) -> int:
        return sum(len(self.epoch_batches(e)) // self.settings.grad_accum for e in range(epoch))

    def _log(self, step: int, metrics: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(step, {"epoch": self.progress.epoch, f"{self.unit}_seen": self.progress.seen,
                                    **metrics})

    # ---- export ------------------------------------------------------------------------------------
    def export(self) -> str | None:
        """Full weights gathered one parameter at a time, loaded into a fresh skeleton on rank 0 with LoRA
        adapters merged in, saved as a Hugging Face folder at <output>/model."""
        state = {}
        for name, tensor in zero.iter_full_parameters(self.engine.module, self.stage):
            if self.rank == 0:
                state[name] = tensor
        if self.rank != 0:
            return None
        skeleton = self.export_skeleton()
        missing, unexpected = skeleton.load_state_dict(state, strict=False)
        tied = _tied_parameter_names(skeleton)
        if unexpected or any(name not in tied for name in missing):
            raise RuntimeError(f"export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        merged = skeleton.merge_and_unload() if hasattr(skeleton, "merge_and_unload") else skeleton
        return self.save_export(merged, self.output_dir / "model")

    def finish(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


def _local_world_size() -> int:
    import ray.train

    return ray.train.get_context().get_local_world_size()


def _tied_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names that alias another parameter (e.g. lm_head tied to the embeddings): the engine lists each shared
    tensor once, so these are legitimately absent from the gathered state."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else math.nan


def save_hf_model(model, tokenizer, target: Path) -> str:
    """save_pretrained + the tokenizer into a temp folder next to `target`, synced to disk (a pipeline's stage record
    will point at it), then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    sync_tree(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    fsync_folder(target.parent)
    return str(target)


def write_json_atomically(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=2))


def run_rank(trainer: ZeroTrainer, export: bool) -> None:
    """The body of every Ray Train worker: train (resuming if Ray Train has a checkpoint), export, and leave
    final_metrics.json for the driver."""
    import ray.train

    trainer.setup()
    final = trainer.run(ray.train.get_checkpoint())
    exported = trainer.export() if export and not trainer.preempted else None
    trainer.finish()
    if trainer.rank == 0:
        write_json_atomically(trainer.output_dir / "final_metrics.json",
                              {"step": trainer.progress.step, "exported": exported, "preempted": trainer.preempted,
                               **final})
    ray.train.report({"step": trainer.progress.step, "done": 1,
                      **{k: v for k, v in final.items() if isinstance(v, (int, float))}})


def balanced_share(items: list, rank: int, world: int) -> tuple[list, int]:
    """This rank's strided share, padded by repeating an item up to ceil(n / world), so every rank runs the
    same number of forward passes (under ZeRO-3 each one gathers parameters collectively); returns the share
    and how many of its items are real."""
    share = items[rank::world]
    size = -(-len(items) // world)
    filler = share[-1:] or items[:1]
    return share + filler * (size - len(share)), len(share)
