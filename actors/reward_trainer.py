"""Bradley–Terry reward-model training: preference pairs → encoded (chosen, rejected) inputs on the driver,
then a ZeroTrainer rank whose loss is −log σ(r_chosen − r_rejected) per pair (`train_loop` is the Ray Train
shell). Held-out pairwise accuracy comes with a 95% Wilson interval, so a reader can tell skill from luck.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from actors import modeling, reward, zero
from actors.algo.preference import bradley_terry_loss
from actors.protocol import to_device
from actors.zero_trainer import TrainingSetup, ZeroTrainer, run_rank, save_hf_model
from common.errors import ConfigError, EmptyDatasetError, RecordError

WILSON_Z95 = 1.959963984540054


@dataclass(frozen=True)
class EncodedPair:
    chosen: reward.Encoded
    rejected: reward.Encoded

    @property
    def length(self) -> int:
        return max(len(self.chosen["input_ids"]), len(self.rejected["input_ids"]))


@dataclass(frozen=True)
class PreferenceSplit:
    train: list[EncodedPair]
    eval: list[EncodedPair]
    dropped_identical: int  # pairs whose chosen and rejected inputs are the same (no preference to learn)


def encode_pairs(records: list[dict], tokenizer, fmt: reward.InputFormat, max_length: int) -> tuple[list, int]:
    """Encode every preference record; pairs that become identical (equal replies, or truncated to the same
    tokens) are dropped and counted."""
    pairs, dropped = [], 0
    for record in records:
        if "chosen" not in record:
            raise RecordError(f"{record['source']}: not a preference pair (no chosen/rejected replies); "
                              f"reward_model.train_files must hold preference data")
        chosen = reward.encode(tokenizer, fmt, record["messages"], record["chosen"], max_length)
        rejected = reward.encode(tokenizer, fmt, record["messages"], record["rejected"], max_length)
        if chosen == rejected:
            dropped += 1
            continue
        pairs.append(EncodedPair(chosen, rejected))
    return pairs, dropped


def build_preference_split(records: list[dict], tokenizer, fmt: reward.InputFormat, max_length: int,
                           eval_fraction: float, seed: int, ranks: int = 1) -> PreferenceSplit:
    """Encoded pairs with a seeded held-out share of a multiple of `ranks` pairs, so every rank runs the same
    number of eval forward passes (under ZeRO-3 each pass is a collective: an extra one on one rank hangs)."""
    pairs, dropped = encode_pairs(records, tokenizer, fmt, max_length)
    if len(pairs) < ranks + 1:
        raise EmptyDatasetError(f"reward model training needs at least {ranks + 1} distinct preference pairs; "
                                f"{len(records)} records read, {dropped} identical after encoding")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(int(round(len(pairs) * eval_fraction)), ranks), len(pairs) - 1)
    n_eval -= n_eval % ranks
    return PreferenceSplit([pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]], dropped)


def check_lora_targets(backbone: str | Path, targets: list[str]) -> None:
    """Fail on the driver, before any worker starts, when lora.target_modules name no module of the backbone
    (encoders call their projections query/key/value, not q_proj/k_proj/v_proj); reads weight names only."""
    from safetensors import safe_open

    from common.families import names_module

    modules = set()  # dotted paths of the modules holding weights
    for file in sorted(Path(backbone).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            modules.update(name.rsplit(".", 1)[0] for name in weights.keys() if name.count(".") >= 1)
    missing = [target for target in targets if not any(names_module(target, module) for module in modules)]
    if missing:
        layers = sorted({module.rsplit(".", 1)[-1] for module in modules})
        raise ConfigError(f"lora.target_modules {missing} are not modules of {backbone} "
                          f"(its layers include {layers[:12]})")


def wilson_interval(successes: float, trials: float, z: float = WILSON_Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; unlike the normal approximation it stays inside
    [0, 1] and is honest for small samples and accuracies near 0 or 1. (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def pairwise_metrics(correct: float, pairs: float, margin_sum: float, loss_sum: float) -> dict[str, float]:
    """Held-out accuracy (chosen strictly above rejected), its 95% Wilson interval, mean margin and loss."""
    low, high = wilson_interval(correct, pairs)
    return {"eval_loss": loss_sum / max(pairs, 1.0), "eval_accuracy": correct / max(pairs, 1.0),
            "eval_accuracy_ci_low": low, "eval_accuracy_ci_high": high, "eval_margin": margin_sum / max(pairs, 1.0),
            "eval_pairs": pairs}


class RewardTrainer(ZeroTrainer):
    section = "reward_model"
    title = "reward model"
    unit = "pairs"

    def __init__(self, cfg: TrainingSetup, split: PreferenceSplit, backbone: str, pad_id: int, output_dir: str):
        super().__init__(cfg, cfg.settings.lr, output_dir)
        self.split, self.backbone, self.pad_id = split, backbone, pad_id

    def build_model(self) -> torch.nn.Module:
        model = reward.load_sequence_classifier(self.backbone, self.pad_id, self.cfg.model.dtype)
        if self.settings.lora:
            # SEQ_CLS makes PEFT train the freshly initialised scalar head alongside the adapters.
            model = modeling.apply_lora(model, self.cfg.lora, task_type="SEQ_CLS")
        return model

    def train_size(self) -> int:
        return len(self.split.train)

    def epoch_batches(self, epoch: int) -> list:
        return self.bucketed_share(self.split.train, epoch, length=lambda pair: pair.length)

    def count_units(self, batch) -> int:
        return len(batch)

    def loss_sum(self, batch) -> torch.Tensor:
        chosen, rejected = self._scores(batch)
        return bradley_terry_loss(chosen, rejected) * len(batch)

    def _scores(self, pairs: list[EncodedPair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected scores from one forward pass over both halves."""
        inputs = to_device(reward.collate([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id),
                           self.engine.device)
        scores = reward.scores_of(self.engine, inputs)
        return scores[:len(pairs)], scores[len(pairs):]

    def evaluate(self) -> dict[str, float]:
        """Pairwise accuracy, Wilson CI, mean margin and BT loss over every rank's share of the held-out pairs."""
        self.engine.eval()
        correct = margin_sum = loss_sum = 0.0
        share = self.split.eval[self.rank::self.world]
        with torch.no_grad():
            for start in range(0, len(share), self.settings.micro_batch_size):
                batch = share[start:start + self.settings.micro_batch_size]
                chosen, rejected = self._scores(batch)
                correct += float((chosen > rejected).sum())
                margin_sum += float((chosen - rejected).sum())
                loss_sum += float(bradley_terry_loss(chosen, rejected)) * len(batch)
        self.engine.train()
        correct, pairs, margin_sum, loss_sum = zero.all_reduce_sum([correct, float(len(share)), margin_sum, loss_sum])
        return pairwise_metrics(correct, pairs, margin_sum, loss_sum)

    def save_export(self, model: torch.nn.Module, target) -> str:
        fmt = reward.read_input_format(self.backbone)
        tokenizer = reward.load_reward_tokenizer(self.backbone, fmt, self.cfg.model.chat_template)
        # In config.json, so the length travels with the model: whoever scores with it is told of a mismatch.
        setattr(model.config, reward.TRAINED_MAX_LENGTH_KEY, self.settings.max_length)
        return save_hf_model(model, tokenizer, target)


def train_loop(payload: dict) -> None:
    """Ray Train worker entry (thin shell): train, checkpoint, export."""
    import ray

    setup: TrainingSetup = payload["setup"]
    trainer = RewardTrainer(setup, ray.get(payload["split_ref"]), payload["backbone"], payload["pad_id"],
                            payload["output_dir"])
    run_rank(trainer, export=setup.settings.export)
