"""SFT batching: held-out split is seeded, batches are length-bucketed, ranks get equal step counts."""

from __future__ import annotations

import pytest

from actors.chat import IGNORE_INDEX, EncodedChat
from actors.sft_data import bucketed_batches, build_split, collate, shard_batches, steps_per_epoch
from common.errors import EmptyDatasetError


def chats(lengths):
    return [EncodedChat(list(range(1, n + 1)), [IGNORE_INDEX] + list(range(2, n + 1))) for n in lengths]


def test_buckets_group_similar_lengths_and_drop_ragged_tail():
    examples = chats([5, 50, 6, 51, 7, 52, 8, 53, 100])
    batches = bucketed_batches(examples, batch_size=2, seed=0, epoch=0, bucket_factor=8)
    assert len(batches) == 4  # 9 examples → 4 full batches; the ragged one is dropped
    for batch in batches:
        lengths = sorted(len(ex.input_ids) for ex in batch)
        assert lengths[1] - lengths[0] <= 2
    assert bucketed_batches(examples, 2, 0, 0, 8) == batches
    assert bucketed_batches(examples, 2, 0, 1, 8) != batches


def test_shards_are_equal_and_disjoint():
    batches = list(range(23))
    shards = [shard_batches(batches, rank, 3, grad_accum=2) for rank in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]
    assert len(set(sum(shards, []))) == 18
    # Dealt step by step: step 0 is batches 0-5, rank 1 taking its second pair of them.
    assert shards[1] == [2, 3, 8, 9, 14, 15]


def test_the_ranks_of_a_step_get_batches_of_like_length():
    """A step waits for its slowest rank: with together = ranks x grad_accum, each step's batches are neighbours in
    one window's length order, so the ranks' shares differ far less than batches of random lengths would."""
    examples = chats([(7 * i) % 97 + 3 for i in range(400)])
    size = lambda batch: sum(len(ex.input_ids) for ex in batch)  # noqa: E731

    def spread(together: int) -> float:
        batches = bucketed_batches(examples, 4, seed=0, epoch=0, together=together)
        shards = [shard_batches(batches, rank, 2, grad_accum=1) for rank in range(2)]
        assert sorted(map(id, sum(shards, []))) == sorted(map(id, batches))  # every batch trained once
        return sum(abs(size(a) - size(b)) for a, b in zip(*shards)) / len(shards[0])

    assert spread(2) < 0.3 * spread(1)  # 27 vs 126 tokens apart per step
    assert bucketed_batches(examples, 4, 0, 0) == bucketed_batches(examples, 4, 0, 0, together=1)
    assert steps_per_epoch(n_train=23 * 4, micro_batch=4, world_size=3, grad_accum=2) == 3


def test_collate_pads_right_and_masks_padding():
    batch = collate(chats([3, 5]), pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist()[0] == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, IGNORE_INDEX]


class _WordTokenizer:
    """Stands in for a tokenizer in build_split's bookkeeping only (the encoding itself is covered with the
    real stories260K tokenizer in test_chat_masks)."""


def test_empty_dataset_is_a_clear_error(monkeypatch):
    import actors.sft_data as sft_data

    monkeypatch.setattr(sft_data, "encode_chat", lambda tok, msgs, n: EncodedChat([1, 2], [IGNORE_INDEX] * 2))
    with pytest.raises(EmptyDatasetError, match="no trainable SFT examples: 2 records read, 2 had no assistant"):
        build_split([{"messages": []}, {"messages": []}], _WordTokenizer(), 16, 0.1, 0)


def test_without_held_out_tokens_there_is_no_eval_loss_rather_than_zero():
    """data.eval_fraction=0 holds nothing out: 0.0 would read as a perfect model."""
    from actors.sft_worker import held_out_loss

    assert held_out_loss(6.0, 4.0) == {"eval_loss": 1.5}
    assert held_out_loss(0.0, 0.0) == {}
