"""What a packed engine's sync hands each packed layer (actors/rollout/packed_rebuild.py): its weight stacked from
the synced parts as vLLM fuses them, a view of the synced bytes where they lie back to back and a copy where they do
not, or why the sync does not match the layer. The rebuild itself, in real vLLM engines fed through Ray's object
store, is checked in tests/ray/test_ppo_roles.py and, for every family, tests/ray/test_families_vllm.py."""

from __future__ import annotations

import torch

from actors.rollout.packed_rebuild import PackedLayer, dropped_weights
from actors.weights import BucketPacker

PARTS = ("layers.0.qkv_proj.q_proj.weight", "layers.0.qkv_proj.k_proj.weight", "layers.0.qkv_proj.v_proj.weight")


def qkv(dropped: bool = True) -> PackedLayer:
    """A fused q/k/v projection of 8 + 2 + 2 rows of 16 inputs, as vLLM packs it (no module needed here)."""
    return PackedLayer("layers.0.qkv_proj", None, PARTS, (12, 16), torch.float32, dropped)


def parts(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(PARTS[0], torch.randn(8, 16, generator=generator)), (PARTS[1], torch.randn(2, 16, generator=generator)),
            (PARTS[2], torch.randn(2, 16, generator=generator))]


def test_parts_side_by_side_in_a_bucket_are_handed_over_as_a_view_of_their_bytes():
    weights = [pair for bucket in BucketPacker(2**20).pack(iter(parts())) for pair in bucket]
    [stack] = dropped_weights([qkv()], dict(weights))
    assert stack.shape == (12, 16) and stack.data_ptr() == weights[0][1].data_ptr()  # no copy: the bucket's bytes
    assert torch.equal(stack, torch.cat([tensor for _, tensor in parts()]))


def test_parts_apart_are_stacked_into_a_copy_in_vllms_order():
    weights = parts()
    [stack] = dropped_weights([qkv()], dict(reversed(weights)))  # separate tensors: nothing to view
    assert torch.equal(stack, torch.cat([tensor for _, tensor in weights]))
    assert all(stack.data_ptr() != tensor.data_ptr() for _, tensor in weights)


def test_a_sync_that_does_not_match_the_layer_says_why_and_layers_that_keep_their_weight_take_nothing():
    weights = dict(parts())
    assert dropped_weights([qkv(dropped=False)], weights) == []  # loaded by the model's own loader instead
    missing = {name: tensor for name, tensor in weights.items() if name != PARTS[1]}
    assert dropped_weights([qkv()], missing) == \
        f"layer layers.0.qkv_proj needs {PARTS[1]}, which the sync does not send under that name"
    for wrong in (torch.randn(3, 16), torch.randn(2, 16, dtype=torch.float64), torch.randn(2, 15)):
        assert dropped_weights([qkv()], {**weights, PARTS[1]: wrong}) == \
            "the parts of layer layers.0.qkv_proj do not stack to its weight's shape [12, 16]"
