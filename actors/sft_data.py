"""SFT examples: records → masked token sequences → deterministic per-rank, length-bucketed batches, or
(data.packing) rows of several chats packed up to data.max_length tokens.

Tokenisation happens once on the driver, so a bad row fails there with its file and line instead of deep
inside a Ray Train worker; workers receive plain id lists and take their own shard by rank.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Callable

import torch

from actors.algo.packing import pack, plan_for
from actors.chat import IGNORE_INDEX, EncodedChat, encode_chat
from common.errors import EmptyDatasetError


@dataclass(frozen=True)
class SFTSplit:
    train: list[EncodedChat]
    eval: list[EncodedChat]
    dropped_no_assistant: int  # chats whose assistant tokens were all truncated away


def build_split(records: list[dict], tokenizer, max_length: int, eval_fraction: float, seed: int) -> SFTSplit:
    """Encode chats, drop those with no trainable token left, and hold out a seeded eval share."""
    encoded, dropped = [], 0
    for record in records:
        if "chosen" in record:  # a preference pair trains SFT on its chosen reply
            messages = record["messages"] + [{"role": "assistant", "content": record["chosen"]}]
        else:
            messages = record["messages"]
        chat = encode_chat(tokenizer, messages, max_length)
        if chat.num_trained == 0:
            dropped += 1
            continue
        encoded.append(chat)
    if not encoded:
        raise EmptyDatasetError(f"no trainable SFT examples: {len(records)} records read, {dropped} had no "
                                f"assistant tokens within data.max_length={max_length}")
    order = list(range(len(encoded)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(encoded) * eval_fraction)) if eval_fraction > 0 else 0
    n_eval = min(max(n_eval, 1 if eval_fraction > 0 else 0), len(encoded) - 1)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    return SFTSplit([encoded[i] for i in train_idx], [encoded[i] for i in eval_idx], dropped)


def bucketed_batches(examples: list, batch_size: int, seed: int, epoch: int, bucket_factor: int = 16,
                     length: Callable[[Any], int] = lambda ex: len(ex.input_ids), together: int = 1) -> list[list]:
    """Shuffle, then sort within windows of batch_size × bucket_factor by `length`, so each batch holds
    similar lengths (little padding) while batch order stays random. `together` (the ranks × grad_accum of one
    optimizer step) neighbouring batches of a window stay next to each other through the final shuffle, so that
    shard_batches gives every rank of a step a batch of about the same length: a step waits for its slowest rank,
    and batches of random lengths left one rank idle for much of it."""
    rng = random.Random(seed * 1_000_003 + epoch)
    pool = list(examples)
    rng.shuffle(pool)
    window = batch_size * bucket_factor
    groups, spare = [], []
    for start in range(0, len(pool), window):
        chunk = sorted(pool[start:start + window], key=length)
        batches = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        if together == 1:  # one group per batch, the ragged one included: the order single ranks always had
            groups.extend([batch] for batch in batches)
            continue
        full = [batch for batch in batches if len(batch) == batch_size]
        whole = len(full) - len(full) % together
        groups.extend(full[i:i + together] for i in range(0, whole, together))
        spare.extend(full[whole:])
    spare.sort(key=lambda batch: sum(map(length, batch)))
    groups.extend(spare[i:i + together] for i in range(0, len(spare), together))
    rng.shuffle(groups)
    return [batch for group in groups for batch in group if len(batch) == batch_size]


def shard_batches(batches: list, rank: int, world_size: int, grad_accum: int) -> list:
    """Rank's share of the batches, dealt step by step: optimizer step k takes the k-th run of world_size ×
    grad_accum batches, rank r the r-th grad_accum of them (neighbours, so of like length, from bucketed_batches
    with together=world_size × grad_accum). Trimmed so every rank runs the same number of full optimizer steps
    (an uneven count would leave one rank waiting forever in a collective)."""
    steps = len(batches) // world_size // grad_accum
    return [batches[(step * world_size + rank) * grad_accum + micro] for step in range(steps)
            for micro in range(grad_accum)]


def collate(batch: list[EncodedChat], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / labels (labels IGNORE_INDEX on padding)."""
    width = max(len(ex.input_ids) for ex in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention[row, :n] = 1
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def pack_collated(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A right-padded micro-batch (collate) as packed rows of its width (actors/algo/packing.py): input_ids, labels
    and restarting position_ids, no attention mask; the same loss, since each chat's first label, which the padded
    layout never predicts, is ignored (so no chat learns the next one's opening). Where nothing packs, the batch as
    it is without its attention mask: under the causal mask alone no real token sees the pads after it."""
    mask = tensors["attention_mask"]
    plan = plan_for(mask)
    if plan.rows == mask.shape[0]:
        return {"input_ids": tensors["input_ids"], "labels": tensors["labels"]}
    labels = tensors["labels"].clone()
    labels[:, 0] = IGNORE_INDEX
    ids, positions = pack(tensors["input_ids"], plan, pad_id=0)
    return {"input_ids": ids, "labels": pack(labels, plan, pad_id=IGNORE_INDEX)[0], "position_ids": positions}


def packed_rows(examples: list[EncodedChat], capacity: int, seed: int, epoch: int) -> list[list[EncodedChat]]:
    """Chats packed into rows of at most `capacity` tokens, best fit, longest first: each chat goes to the
    row with the least room that still holds it (a new row when none does). Rows come back in a seeded order
    that changes every epoch; which chats share a row changes too, since ties are broken by a seeded shuffle."""
    rng = random.Random(seed * 1_000_003 + epoch)
    pool = list(examples)
    rng.shuffle(pool)
    pool.sort(key=lambda ex: len(ex.input_ids), reverse=True)  # stable: the shuffle orders equal lengths
    rows: list[list[EncodedChat]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for ex in pool:
        n = len(ex.input_ids)
        if n > capacity:
            raise ValueError(f"a chat of {n} tokens cannot be packed into rows of {capacity}")
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            rows.append([ex])
            free, index = capacity - n, len(rows) - 1
        else:
            free, index = room.pop(at)
            rows[index].append(ex)
            free -= n
        if free > 0:
            bisect.insort(room, (free, index))
    rng.shuffle(rows)
    return rows


def packed_batches(rows: list[list[EncodedChat]], rows_per_batch: int) -> list[list[list[EncodedChat]]]:
    return [rows[i:i + rows_per_batch] for i in range(0, len(rows) - rows_per_batch + 1, rows_per_batch)]


def collate_packed(batch: list[list[EncodedChat]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids / labels / position_ids for rows of packed chats, and no attention mask: Transformers reads
    the restarts of position_ids as chat boundaries and lets each token attend only within its own chat.

    Each chat's first label is ignored, so no token learns to predict the next chat's opening from the end of
    the one before it. The tail of a short row is padding numbered as one more chat, with no labels."""
    width = max(sum(len(ex.input_ids) for ex in row) for row in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    for r, row in enumerate(batch):
        at = 0
        for ex in row:
            n = len(ex.input_ids)
            ids[r, at:at + n] = torch.tensor(ex.input_ids)
            labels[r, at + 1:at + n] = torch.tensor(ex.labels[1:])
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def steps_per_epoch(n_train: int, micro_batch: int, world_size: int, grad_accum: int) -> int:
    per_rank = (n_train // micro_batch) // world_size
    return per_rank // grad_accum
