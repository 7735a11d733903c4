"""SFT packing (data.packing): rows filled by best fit, collated with restarting positions and no cross-chat
labels, and a packed forward that gives exactly the loss of the same chats one per row; and a micro-batch's own
chats packed into rows of its width (sft.pack_sequences) with the same loss."""

from __future__ import annotations

import math
import random

import pytest
import torch

from actors.chat import IGNORE_INDEX, EncodedChat
from actors.sft_data import collate, collate_packed, pack_collated, packed_batches, packed_rows


def chat(ids: list[int], trained_from: int) -> EncodedChat:
    """A chat whose tokens from index `trained_from` on are the assistant's."""
    return EncodedChat(ids, [IGNORE_INDEX] * trained_from + ids[trained_from:])


def random_chats(n: int, seed: int, low: int = 8, high: int = 120) -> list[EncodedChat]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(low, high)
        out.append(chat([rng.randint(3, 500) for _ in range(length)], rng.randint(1, length - 1)))
    return out


def test_every_chat_lands_in_exactly_one_row_within_capacity_and_rows_are_nearly_full():
    examples = random_chats(500, seed=0)
    rows = packed_rows(examples, capacity=256, seed=1, epoch=0)
    packed = [ex for row in rows for ex in row]
    assert sorted(map(id, packed)) == sorted(map(id, examples))
    assert max(sum(len(ex.input_ids) for ex in row) for row in rows) <= 256
    # Best fit, longest first, lands within a few rows of the bound no packing can beat; one chat per row
    # would need 500 rows.
    bound = math.ceil(sum(len(ex.input_ids) for ex in examples) / 256)
    assert bound <= len(rows) <= bound + 2, (bound, len(rows))


def test_rows_are_seeded_and_change_with_the_epoch():
    examples = random_chats(200, seed=3)
    as_ids = lambda rows: [[id(ex) for ex in row] for row in rows]  # noqa: E731
    first = as_ids(packed_rows(examples, 256, seed=7, epoch=0))
    assert as_ids(packed_rows(examples, 256, seed=7, epoch=0)) == first
    assert as_ids(packed_rows(examples, 256, seed=7, epoch=1)) != first


def test_a_chat_longer_than_a_row_is_refused():
    with pytest.raises(ValueError, match="a chat of 9 tokens cannot be packed into rows of 8"):
        packed_rows([chat(list(range(1, 10)), 2)], capacity=8, seed=0, epoch=0)


def test_batches_hold_whole_groups_of_rows_and_drop_the_ragged_tail():
    assert packed_batches([[1], [2], [3], [4], [5]], 2) == [[[1], [2]], [[3], [4]]]


def test_collated_rows_by_hand():
    a, b, c = chat([11, 12, 13], 1), chat([21, 22], 0), chat([31, 32, 33, 34], 2)  # b: every label trained
    out = collate_packed([[a, b], [c]], pad_id=0)
    assert out["input_ids"].tolist() == [[11, 12, 13, 21, 22], [31, 32, 33, 34, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    # b's first label is dropped: nothing learns to predict b's opening from a's last token.
    assert out["labels"].tolist() == [[-100, 12, 13, -100, 22], [-100, -100, 33, 34, -100]]
    assert "attention_mask" not in out


def tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).double().eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fused", [True, False])
def test_packed_loss_equals_the_same_chats_one_per_row(attn, fused):
    """float64: a packed row must give every chat the loss it has alone (positions restart, attention stays
    inside the chat). Without the chat boundaries the later chats would see the earlier ones and differ."""
    from actors.sft_worker import causal_lm_loss_sums

    model = tiny_llama(attn)
    examples = random_chats(9, seed=5, low=6, high=40)
    rows = packed_rows(examples, capacity=96, seed=0, epoch=0)
    assert any(len(row) > 1 for row in rows)
    packed_total, packed_count = causal_lm_loss_sums(model, collate_packed(rows, 0), fused=fused)
    alone_total, alone_count = causal_lm_loss_sums(model, collate(examples, 0), fused=fused)
    assert packed_count == alone_count == sum(sum(1 for t in ex.labels[1:] if t != IGNORE_INDEX) for ex in examples)
    # The plain path casts logits to float32 for the cross-entropy; the fused one stays in float64.
    assert packed_total.item() == pytest.approx(alone_total.item(), rel=1e-10 if fused else 1e-6)
    leaky = collate_packed(rows, 0)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].size(1)).expand_as(leaky["input_ids"])
    assert causal_lm_loss_sums(model, leaky, fused=fused)[0].item() != pytest.approx(alone_total.item(), rel=1e-4)


def test_a_micro_batch_packed_into_rows_of_its_width_by_hand():
    a, b, c = chat([11, 12, 13], 1), chat([21, 22], 0), chat([31, 32, 33, 34, 35], 2)  # width 5
    out = pack_collated(collate([a, b, c], pad_id=0))
    assert out["input_ids"].tolist() == [[31, 32, 33, 34, 35], [11, 12, 13, 21, 22]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert out["labels"].tolist() == [[-100, -100, 33, 34, 35], [-100, 12, 13, -100, 22]]  # b's opening dropped
    assert "attention_mask" not in out
    # Nothing to pack (every chat longer than half the width): the batch as it is, without its mask.
    alone = pack_collated(collate([c, chat([41, 42, 43, 44], 1)], pad_id=0))
    assert sorted(alone) == ["input_ids", "labels"] and alone["input_ids"].shape == (2, 5)


@pytest.mark.parametrize("fused", [True, False])
def test_a_packed_micro_batch_has_the_padded_loss(fused):
    from actors.algo.packing import plan_for
    from actors.sft_worker import causal_lm_loss_sums

    model = tiny_llama("sdpa")
    batch = collate(random_chats(9, seed=6, low=6, high=40), 0)
    assert plan_for(batch["attention_mask"]).rows < 9
    padded_total, padded_count = causal_lm_loss_sums(model, batch, fused=fused)
    packed_total, packed_count = causal_lm_loss_sums(model, pack_collated(batch), fused=fused)
    assert packed_count == padded_count
    assert packed_total.item() == pytest.approx(padded_total.item(), rel=1e-10 if fused else 1e-6)


@pytest.mark.parametrize("data_packing, pack, keys, rows", [
    (True, True, ["input_ids", "labels", "position_ids"], 3),  # data.packing's rows as packed
    (True, False, ["attention_mask", "input_ids", "labels"], 9),  # the model failed the check: one chat per row
    (False, True, ["input_ids", "labels", "position_ids"], None),  # sft.pack_sequences: rows of the batch's width
    (False, False, ["attention_mask", "input_ids", "labels"], 9),
])
def test_every_micro_batch_layout_has_the_same_loss(data_packing, pack, keys, rows):
    """The worker's layouts, including data.packing's fallback when its model reads across chat boundaries."""
    from actors.sft_worker import causal_lm_loss_sums, micro_batch_tensors

    model = tiny_llama("sdpa")
    examples = random_chats(9, seed=7, low=6, high=40)
    packed = packed_rows(examples, capacity=96, seed=0, epoch=0)
    assert len(packed) == 3
    tensors = micro_batch_tensors(packed if data_packing else examples, 0, data_packing, pack)
    assert sorted(tensors) == keys and (rows is None or tensors["input_ids"].size(0) == rows)
    alone_total, alone_count = causal_lm_loss_sums(model, collate(examples, 0))
    total, count = causal_lm_loss_sums(model, tensors)
    assert count == alone_count and total.item() == pytest.approx(alone_total.item(), rel=1e-10)
