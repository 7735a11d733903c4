"""The layout checks of a zero-copy sync (actors/rollout/store_views.py): which checkpoint weights make each of an
engine's parameters, and when their bytes can be viewed as it. The views themselves, in a real vLLM engine fed
through Ray's object store, are checked in tests/ray/test_rollout_engines.py and tests/ray/test_ppo_roles.py."""

from __future__ import annotations

import numpy as np
import torch

from actors.rollout.store_views import checkpoint_names, fits, in_store, plan, region, stacked, targets
from actors.weights import BucketPacker, PackedBucket

FUSED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


class Attention(torch.nn.Module):
    """A layer as vLLM builds it: q, k and v stacked in one projection (as LlamaForCausalLM declares in
    packed_modules_mapping), and a norm of its own."""

    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self):
        super().__init__()
        self.qkv_proj = torch.nn.Linear(16, 8 + 2 + 2, bias=False)  # 8 query rows, 2 key rows, 2 value rows
        self.norm = torch.nn.Parameter(torch.ones(16))


def checkpoint(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    # Rows of 16 fp32 values: every part a whole number of the packer's 64-byte alignment steps, as real widths are.
    return [("q_proj.weight", torch.randn(8, 16, generator=generator)),
            ("k_proj.weight", torch.randn(2, 16, generator=generator)),
            ("v_proj.weight", torch.randn(2, 16, generator=generator)),
            ("norm", torch.randn(16, generator=generator))]


def packed(weights, **kwargs) -> list[tuple[str, torch.Tensor]]:
    """The weights as an engine reads them: (name, view) pairs of PackedBuckets."""
    return [pair for bucket in BucketPacker(2**20).pack(iter(weights), **kwargs) for pair in bucket]


def test_a_fused_parameter_is_made_of_its_parts_in_the_order_vllm_stacks_them():
    assert checkpoint_names("model.layers.3.self_attn.qkv_proj.weight", FUSED) == [
        "model.layers.3.self_attn.q_proj.weight", "model.layers.3.self_attn.k_proj.weight",
        "model.layers.3.self_attn.v_proj.weight"]
    assert checkpoint_names("model.layers.3.mlp.gate_up_proj.bias", FUSED) == [
        "model.layers.3.mlp.gate_proj.bias", "model.layers.3.mlp.up_proj.bias"]
    assert checkpoint_names("qkv_proj.weight", FUSED) == ["q_proj.weight", "k_proj.weight", "v_proj.weight"]
    assert checkpoint_names("model.norm.weight", FUSED) == ["model.norm.weight"]


def test_parts_side_by_side_are_viewed_as_the_stacked_parameter_without_a_copy():
    model = Attention()
    weights = checkpoint()
    steps = plan(model, packed(weights, stable=False))  # staged: the bucket is one buffer, the parts back to back
    assert sorted(target.name for target, _, _ in steps) == ["norm", "qkv_proj.weight"]
    qkv, norm = ({target.name: view for target, _, view in steps}[name] for name in ("qkv_proj.weight", "norm"))
    assert torch.equal(qkv, torch.cat([tensor for _, tensor in weights[:3]]))
    assert torch.equal(norm, weights[3][1])
    first = dict(packed_pairs := packed(weights, stable=False))["q_proj.weight"]
    viewed = {target.name: view for target, _, view in plan(model, packed_pairs)}
    assert viewed["qkv_proj.weight"].data_ptr() == first.data_ptr()  # a view where the bucket holds q


def test_parts_apart_or_out_of_order_or_of_another_dtype_are_not_viewed():
    model = Attention()
    target = next(target for target in targets(model) if target.name == "qkv_proj.weight")
    q, k, v, _ = (tensor for _, tensor in checkpoint())
    flat = torch.cat([q.reshape(-1), torch.zeros(16), k.reshape(-1), v.reshape(-1)])  # a gap after q
    apart = [flat[:128].view(8, 16), flat[144:176].view(2, 16), flat[176:].view(2, 16)]
    assert fits(apart, target) and region(apart, target) is None
    together = torch.cat([q, k, v])
    swapped = [together[8:10], together[:8], together[10:]]  # k's bytes first: not vLLM's order
    assert fits(swapped, target) and region(swapped, target) is None
    assert not fits([together[:8].double(), together[8:10].double(), together[10:].double()], target)
    assert not fits([together[:8], together[8:10]], target)  # v missing: too few rows
    assert torch.equal(region([together[:8], together[8:10], together[10:]], target), together)


def test_parts_that_are_not_side_by_side_are_planned_for_a_copy_that_stacks_them():
    model = Attention()
    weights = checkpoint()
    steps = {target.name: (parts, how) for target, parts, how in plan(model, packed(weights, stable=True))}
    parts, how = steps["qkv_proj.weight"]  # stable tensors: buffers of their own, side by side only in the store
    assert how == "stack" and isinstance(steps["norm"][1], torch.Tensor)
    into = torch.empty(12, 16)
    for place, part in stacked(parts, into):
        place.copy_(part)
    assert torch.equal(into, torch.cat([tensor for _, tensor in weights[:3]]))


def test_a_sync_that_does_not_match_the_model_says_which_parameter_or_weight():
    model = Attention()
    weights = checkpoint()
    assert plan(model, packed(weights[1:])) == ("parameter qkv_proj.weight needs q_proj.weight, which the sync does "
                                                 "not send under that name")
    assert plan(model, packed(weights + [("extra.weight", torch.ones(16))], stable=False)) == (
        "the sync sends extra.weight, which is no parameter's weight")
    # a part that does not stack to its parameter's shape (vLLM pads a vocabulary) is left to vLLM's loader
    assert {target.name: how for target, _, how in plan(model, packed(weights[:3] + [("norm", torch.ones(15))]))
            }["norm"] == "loader"


def test_a_tied_name_sharing_a_parameters_bytes_is_accepted():
    model = Attention()
    steps = plan(model, packed(checkpoint(), aliases={"norm": ("norm_again",)}, stable=False))
    assert sorted(target.name for target, _, _ in steps) == ["norm", "qkv_proj.weight"]


def test_only_buckets_read_out_of_the_store_count_as_in_it():
    bucket = next(BucketPacker(2**20).pack(iter(checkpoint()), stable=False))
    assert not in_store([bucket])  # the policy's own, writable buffers
    frozen = [np.frombuffer(buffer.tobytes(), dtype=np.uint8) for buffer in bucket.buffers]  # read-only, as the store's
    assert in_store([PackedBucket(tuple(frozen), bucket.entries)])
    assert not in_store([list(bucket)]) and not in_store([])


def test_a_sync_whose_load_fails_leaves_no_parameter_viewing_its_buckets():
    """adopt sets this sync's views only after the copies and vLLM's loader succeeded: the engine lets go of the
    last sync's buckets only when adopt returns, and a failure leaves it holding those, not these."""
    from types import SimpleNamespace

    import pytest

    from actors.rollout.store_views import adopt

    class Refusing(Attention):
        def load_weights(self, weights):
            raise ValueError("cannot load " + ", ".join(name for name, _ in weights))

    model = Refusing()
    before = model.qkv_proj.weight.data_ptr()
    weights = checkpoint()
    weights[3] = ("norm", weights[3][1].double())  # another dtype: vLLM's loader takes it, the rest is viewed
    synced = packed(weights, stable=False)
    assert {target.name: how if isinstance(how, str) else "view" for target, _, how in plan(model, synced)} == {
        "qkv_proj.weight": "view", "norm": "loader"}
    with pytest.raises(ValueError, match="cannot load norm"):
        adopt(SimpleNamespace(model_runner=SimpleNamespace(get_model=lambda: model)), synced, verified=True)
    assert model.qkv_proj.weight.data_ptr() == before
