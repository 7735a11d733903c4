"""Offline DPO: preference pairs → (prompt + chosen, prompt + rejected) token sequences on the driver, with only
the compared reply in the loss mask; then a ZeroTrainer rank whose loss is a DPO-family loss
(actors/algo/preference.py, by registry name) against reference log-probs computed once (`train_loop` is the
Ray Train shell). The loop, checkpoints, resume and export live in actors/zero_trainer.py.

Reference cache: at setup, before the first update, every rank scores its strided share of the train and
held-out pairs with its own engine, which at that moment still holds the start weights; for
dpo.reference=adapter_disabled the LoRA adapters are switched off while it does. The per-pair sums are
all-reduced so every rank holds all of them (two floats per pair), and are attached to the pairs themselves,
so a pair never meets another pair's reference however later epochs shuffle and shard them. Why this way
rather than a separate Ray task: it needs no second copy of the model anywhere (a ZeRO-3-sharded model that
fits no single device still works), it runs data-parallel on the ranks that train, and a resumed run scores
again before its checkpoint is loaded, so the cache is always the start model's.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace

import torch

from actors import modeling, packed, zero
from actors.algo.packing import prompt_lengths
from actors.algo.preference import dpo_loss, sequence_logprob
from actors.chat import IGNORE_INDEX, EncodedChat, assistant_spans
from actors.protocol import to_device
from actors.reward_trainer import wilson_interval
from actors.scored import head_agrees, scored_logprobs
from actors.sft_data import collate
from actors.zero_trainer import TrainingSetup, ZeroTrainer, balanced_share, run_rank, save_hf_model
from common.errors import EmptyDatasetError, RecordError


@dataclass(frozen=True)
class PreferencePair:
    chosen: EncodedChat  # prompt + chosen reply; labels on the reply's tokens only
    rejected: EncodedChat  # prompt + rejected reply, likewise
    ref_chosen: float | None = None  # reference log-prob of the chosen reply (summed over its tokens), set at setup
    ref_rejected: float | None = None

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass(frozen=True)
class DPOSplit:
    train: list[PreferencePair]
    eval: list[PreferencePair]
    dropped_truncated: int  # a reply lost all its tokens to max_length
    dropped_identical: int  # chosen and rejected encode to the same tokens: no preference to learn


def encode_reply(tokenizer, prompt: list[dict], reply: str, max_length: int) -> EncodedChat:
    """The chat `prompt` + one assistant `reply`, labelled on the reply alone (earlier assistant turns of a
    multi-turn prompt are context, not compared); cut to `max_length` tokens."""
    text, spans = assistant_spans(tokenizer, prompt + [{"role": "assistant", "content": reply}])
    start, end = spans[-1]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])[:max_length]
    labels = [token if start <= first < end and last > first else IGNORE_INDEX
              for token, (first, last) in zip(ids, enc["offset_mapping"])]
    return EncodedChat(ids, labels)


def encode_pairs(records: list[dict], tokenizer, max_length: int) -> tuple[list[PreferencePair], int, int]:
    """(pairs, dropped because a reply was truncated away, dropped because both sides encode identically)."""
    pairs, truncated, identical = [], 0, 0
    for record in records:
        if "chosen" not in record:
            raise RecordError(f"{record['source']}: not a preference pair (no chosen/rejected replies); "
                              f"dpo.train_files must hold preference data")
        chosen = encode_reply(tokenizer, record["messages"], record["chosen"], max_length)
        rejected = encode_reply(tokenizer, record["messages"], record["rejected"], max_length)
        if chosen.num_trained == 0 or rejected.num_trained == 0:
            truncated += 1
        elif chosen == rejected:
            identical += 1
        else:
            pairs.append(PreferencePair(chosen, rejected))
    return pairs, truncated, identical


def build_dpo_split(records: list[dict], tokenizer, max_length: int, eval_fraction: float, seed: int) -> DPOSplit:
    """Encoded pairs with a seeded held-out share (at least one pair on each side)."""
    pairs, truncated, identical = encode_pairs(records, tokenizer, max_length)
    if len(pairs) < 2:
        raise EmptyDatasetError(f"DPO needs at least 2 usable preference pairs; {len(records)} records read, "
                                f"{truncated} lost a reply to dpo.max_length={max_length}, {identical} identical")
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(int(round(len(pairs) * eval_fraction)), 1), len(pairs) - 1)
    return DPOSplit([pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]], truncated, identical)


def pair_logprobs(model, pairs: list[PreferencePair], pad_id: int, pack: bool = False,
                  share: bool = False, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and of the rejected replies [B] each, from one forward pass over both (over
    packed rows when `pack`, each pair's prompt laid down once when `share` as well: actors/packed.py), the head
    run at the replies' positions alone where `fused` allows (actors/scored.py)."""
    inputs = to_device(collate([pair.chosen for pair in pairs] + [pair.rejected for pair in pairs], pad_id),
                       model.device)
    replies = inputs["labels"][:, 1:] != IGNORE_INDEX  # in the action space: position t is about token t + 1
    prompts = prompt_lengths(replies, inputs["attention_mask"]) if share else None
    logp = sequence_logprob(scored_logprobs(model, inputs["input_ids"], inputs["attention_mask"], replies, pack,
                                            prompts, fused), replies)
    return logp[:len(pairs)], logp[len(pairs):]


def reference_of(pairs: list[PreferencePair], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = torch.tensor([pair.ref_chosen for pair in pairs], dtype=like.dtype, device=like.device)
    rejected = torch.tensor([pair.ref_rejected for pair in pairs], dtype=like.dtype, device=like.device)
    return chosen, rejected


def with_reference(pairs: list[PreferencePair], table: torch.Tensor) -> list[PreferencePair]:
    """Pairs carrying their row of the [N, 2] (chosen, rejected) reference table."""
    return [replace(pair, ref_chosen=chosen, ref_rejected=rejected) for pair, (chosen, rejected) in
            zip(pairs, table.tolist())]


@dataclass
class RewardTally:
    """Running sums behind the implicit-reward metrics of one optimizer step or one evaluation."""
    pairs: float = 0.0
    loss: float = 0.0
    chosen: float = 0.0
    rejected: float = 0.0
    correct: float = 0.0
    ties: float = 0.0

    def add(self, loss_sum: float, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> None:
        self.pairs += len(chosen_rewards)
        self.loss += loss_sum
        self.chosen += float(chosen_rewards.sum())
        self.rejected += float(rejected_rewards.sum())
        self.correct += float((chosen_rewards > rejected_rewards).sum())
        self.ties += float((chosen_rewards == rejected_rewards).sum())

    def reduced(self) -> RewardTally:
        return RewardTally(*zero.all_reduce_sum([self.pairs, self.loss, self.chosen, self.rejected, self.correct,
                                                 self.ties]))

    def reward_metrics(self, prefix: str) -> dict[str, float]:
        """Mean implicit rewards, their margin, and accuracy = share of pairs with chosen strictly above
        rejected (ties, e.g. every pair while policy = reference, count as wrong)."""
        n = max(self.pairs, 1.0)
        return {f"{prefix}chosen_reward": self.chosen / n, f"{prefix}rejected_reward": self.rejected / n,
                f"{prefix}reward_margin": (self.chosen - self.rejected) / n,
                f"{prefix}reward_accuracy": self.correct / n}


class DPOTrainer(ZeroTrainer):
    section = "dpo"
    unit = "pairs"

    def __init__(self, cfg: TrainingSetup, split: DPOSplit, pad_id: int, output_dir: str, tokenizer_path: str):
        super().__init__(cfg, cfg.settings.lr, output_dir)
        self.split, self.pad_id, self.tokenizer_path = split, pad_id, tokenizer_path
        self.step_tally = RewardTally()
        self.pack = False  # dpo.pack_sequences, once setup has checked the model (actors/packed.py)
        self.share = False  # dpo.share_prompts, likewise
        self.fused = False  # model.fused_loss: the head at the replies alone, likewise (actors/scored.py)

    def build_model(self) -> torch.nn.Module:
        return modeling.trainable_causal_lm(self.cfg.model, self.cfg.lora)

    def export_skeleton(self) -> torch.nn.Module:
        return modeling.trainable_causal_lm(self.cfg.model, self.cfg.lora, for_export=True)

    def setup(self) -> None:
        super().setup()
        self.pack, self.share = packed.engine_layout(
            self.engine, packed.lm_forward(self.engine), self.engine.module.config,
            modeling.DTYPES[self.cfg.model.dtype], "dpo", self.settings.pack_sequences, self.settings.share_prompts)
        self.fused = head_agrees(self.engine, self.engine.module.config.vocab_size, self.engine.device,
                                 modeling.DTYPES[self.cfg.model.dtype], "dpo", self.cfg.model.fused_loss)
        # Here, not in run(): a resumed run must score with the start weights, before its checkpoint loads.
        self.split = replace(self.split, train=with_reference(self.split.train, self.reference_table(self.split.train)),
                             eval=with_reference(self.split.eval, self.reference_table(self.split.eval)))

    def reference_table(self, pairs: list[PreferencePair]) -> torch.Tensor:
        """[N, 2] reference log-probs (chosen, rejected) of every pair, each rank scoring its strided share."""
        share, real = balanced_share(pairs, self.rank, self.world)
        adapters_off = self.settings.reference == "adapter_disabled"
        with self.engine.module.disable_adapter() if adapters_off else contextlib.nullcontext():
            chosen, rejected = self.score(share)
        table = torch.zeros(len(pairs), 2, dtype=torch.float64)
        table[self.rank::self.world] = torch.stack([chosen[:real], rejected[:real]], dim=1).double()
        return torch.tensor(zero.all_reduce_sum(table.flatten().tolist()), dtype=torch.float64).view(-1, 2)

    @torch.no_grad()
    def score(self, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy log-probs of chosen and rejected replies, micro-batch by micro-batch, in eval mode. Evaluation
        and the reference cache both come through here with the same batches, so at step 0 they agree bit for
        bit (reward margins exactly 0, loss exactly ln 2)."""
        self.engine.eval()
        parts = [pair_logprobs(self.engine, pairs[start:start + self.settings.micro_batch_size], self.pad_id, self.pack,
                               self.share, self.fused)
                 for start in range(0, len(pairs), self.settings.micro_batch_size)]
        self.engine.train()
        return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])

    def dpo_terms(self, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, pairs: list[PreferencePair]):
        ref_chosen, ref_rejected = reference_of(pairs, policy_chosen)
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, self.settings.beta,
                        self.settings.loss, self.settings.label_smoothing)

    def train_size(self) -> int:
        return len(self.split.train)

    def epoch_batches(self, epoch: int) -> list:
        return self.bucketed_share(self.split.train, epoch, length=lambda pair: pair.length)

    def count_units(self, batch) -> int:
        return len(batch)

    def loss_sum(self, batch) -> torch.Tensor:
        logprobs = pair_logprobs(self.engine, batch, self.pad_id, self.pack, self.share, self.fused)
        loss, chosen_rewards, rejected_rewards = self.dpo_terms(*logprobs, batch)
        self.step_tally.add(float(loss.detach()) * len(batch), chosen_rewards, rejected_rewards)
        return loss * len(batch)

    def train_step(self, micro_batches: list) -> dict:
        """The shared optimizer step plus this step's implicit rewards, margin and accuracy over all ranks."""
        metrics = super().train_step(micro_batches)
        tally, self.step_tally = self.step_tally.reduced(), RewardTally()
        return {**metrics, **tally.reward_metrics("")}

    def evaluate(self) -> dict[str, float]:
        """Held-out DPO loss and implicit-reward metrics over every rank's share of the held-out pairs, with a
        95% Wilson interval on the accuracy and the share of exact ties."""
        share, real = balanced_share(self.split.eval, self.rank, self.world)
        chosen, rejected = self.score(share)
        loss, chosen_rewards, rejected_rewards = self.dpo_terms(chosen[:real], rejected[:real], share[:real])
        local = RewardTally()
        local.add(float(loss) * real, chosen_rewards, rejected_rewards)
        tally = local.reduced()
        low, high = wilson_interval(tally.correct, tally.pairs)
        return {"eval_loss": tally.loss / max(tally.pairs, 1.0), **tally.reward_metrics("eval_"),
                "eval_reward_accuracy_ci_low": low, "eval_reward_accuracy_ci_high": high,
                "eval_reward_ties": tally.ties / max(tally.pairs, 1.0), "eval_pairs": tally.pairs}

    def save_export(self, model: torch.nn.Module, target) -> str:
        tokenizer = modeling.load_tokenizer(self.tokenizer_path, self.cfg.model.chat_template)
        return save_hf_model(model, tokenizer, target)


def train_loop(payload: dict) -> None:
    """Ray Train worker entry (thin shell): train, checkpoint, export."""
    import ray

    setup: TrainingSetup = payload["setup"]
    trainer = DPOTrainer(setup, ray.get(payload["split_ref"]), payload["pad_id"], payload["output_dir"],
                         payload["tokenizer_path"])
    run_rank(trainer, export=setup.settings.export)
