"""The weight sync's packing (actors/weights.py): buckets unpack to exactly the names, dtypes, shapes and values
that went in, tied names share one copy of the bytes, and the packed stream of a real model (plain, LoRA-merged)
is what hf_named_weights gives the export; the Hugging Face engine loads packed buckets."""

from __future__ import annotations

import copy

import pytest
import torch

from actors.weights import (ALIGN, BucketPacker, PackedBucket, borrowed_hf_weights, flatten_parameters,
                            hf_named_weights, hf_tied_aliases)
from tests.conftest import POLICY_PATH


def unpacked(packer: BucketPacker, named, aliases=None,
             stable: bool = False) -> tuple[list[tuple[str, torch.Tensor]], list[PackedBucket]]:
    """Every (name, tensor) out of the packer, cloned while its bucket is current (the staging buffer is reused)."""
    out, seen = [], []
    for bucket in packer.pack(iter(named), aliases, stable):
        seen.append(PackedBucket(tuple(buffer.copy() for buffer in bucket.buffers), bucket.entries))
        out += [(name, tensor.clone()) for name, tensor in bucket]
    return out, seen


def mixed_weights() -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        ("embed.weight", torch.randn(16, 8, generator=generator)),
        ("scalar", torch.tensor(3.5, dtype=torch.float64)),
        ("norm.weight", torch.randn(7, generator=generator).to(torch.bfloat16)),  # 14 bytes: the next is realigned
        ("half", torch.randn(3, 5, generator=generator).to(torch.float16)),
        ("transposed", torch.randn(6, 4, generator=generator).t()),  # not contiguous
        ("ids", torch.arange(5, dtype=torch.int64)),
        ("mask", torch.tensor([True, False, True])),
        ("empty", torch.empty(0, 4)),
        ("big", torch.randn(300, generator=generator)),  # larger than a bucket: a bucket of its own
    ]


@pytest.mark.parametrize("stable", [False, True], ids=["staged", "views"])
def test_round_trip_is_exact_across_buckets_dtypes_and_shapes(stable):
    weights = mixed_weights()
    out, packed = unpacked(BucketPacker(bucket_bytes=640), weights, stable=stable)
    assert [name for name, _ in out] == [name for name, _ in weights]
    for (name, sent), (_, got) in zip(weights, out):
        assert got.dtype == sent.dtype and got.shape == sent.shape, name
        assert torch.equal(got, sent), name
    assert len(packed) > 2
    for bucket in packed:
        assert all(buffer.dtype.name == "uint8" for buffer in bucket.buffers)
        assert len(bucket) == 1 or bucket.nbytes <= 640  # only a lone oversized tensor exceeds a bucket
        assert all(offset % ALIGN == 0 for _, _, offset, _, _ in bucket.entries)
        # staged: everything in the staging buffer (buffer 0); views: a buffer per tensor and nothing staged
        assert (bucket.buffers[0].nbytes == 0) == stable


def test_stable_cpu_tensors_are_shipped_as_views_not_copies():
    weights = mixed_weights()
    (bucket,) = BucketPacker(1 << 20).pack(iter(weights), stable=True)
    sources = {name: tensor for name, tensor in weights if tensor.is_contiguous() and tensor.numel()}
    for name, view in bucket:
        if name in sources:
            assert view.data_ptr() == sources[name].data_ptr(), name


def test_tied_names_share_one_copy_of_the_bytes():
    weights = mixed_weights()
    aliases = {"embed.weight": ("lm_head.weight",)}
    plain = sum(bucket.nbytes for bucket in unpacked(BucketPacker(1 << 20), weights)[1])
    out, (bucket,) = unpacked(BucketPacker(1 << 20), weights, aliases)
    assert bucket.nbytes == plain  # the alias added an entry, not bytes
    names = [name for name, _ in out]
    assert names[:2] == ["embed.weight", "lm_head.weight"] and len(names) == len(weights) + 1
    views = dict(bucket)
    assert views["lm_head.weight"].data_ptr() == views["embed.weight"].data_ptr()
    assert torch.equal(views["lm_head.weight"], weights[0][1])


def test_the_staging_buffer_is_reused_from_sync_to_sync():
    packer = BucketPacker(bucket_bytes=1 << 20)
    weights = mixed_weights()
    first = [bucket.buffers[0].ctypes.data for bucket in packer.pack(iter(weights))]
    again = [bucket.buffers[0].ctypes.data for bucket in packer.pack(iter(weights))]
    assert first == again


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32).eval()


def assert_packed_stream_is_the_export(module):
    expected = list(hf_named_weights(module, stage=0))
    for stable in (False, True):
        out, _ = unpacked(BucketPacker(64 << 10), borrowed_hf_weights(module, stage=0), hf_tied_aliases(module), stable)
        assert [name for name, _ in out] == [name for name, _ in expected]
        for (name, want), (_, got) in zip(expected, out):
            assert got.dtype == want.dtype and torch.equal(got, want), name


def test_a_real_tied_model_packs_to_what_the_export_sees(model):
    assert hf_tied_aliases(model) == {"model.embed_tokens.weight": ("lm_head.weight",)}
    assert_packed_stream_is_the_export(model)
    assert_packed_stream_is_the_export(copy.deepcopy(model).to(torch.bfloat16))


def test_a_lora_model_packs_its_merged_weights(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # B starts at zero: make the merge change something
    assert_packed_stream_is_the_export(peft_model)
    # The tied embedding once, its output name as an alias of it: not a second weight, sent twice (and in a buffer
    # of its own, which no engine parameter could view).
    assert [name for name, _ in borrowed_hf_weights(peft_model, 0)].count("lm_head.weight") == 0
    stream = unpacked(BucketPacker(1 << 20), borrowed_hf_weights(peft_model, 0), hf_tied_aliases(peft_model), True)[0]
    names = [name for name, _ in stream]
    assert len(names) == len(set(names)) and "lm_head.weight" in names
    out = dict(stream)
    assert not any("lora" in name for name in out)
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    assert out.keys() == merged.keys()
    for name, tensor in out.items():
        assert torch.allclose(tensor, merged[name], atol=1e-6), name
    layer = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(out[layer], model.state_dict()[layer])


def test_an_adapted_embedding_sends_its_merged_weight(model):
    """PEFT keeps an Embedding layer's adapters in lora_embedding_A/B: skipped, embed_tokens reached the engines
    and the export without its delta (12.7 off on a tiny Llama). (This model ties its head to the embedding, which
    an adapter on the embedding alone unties in training: a tied engine cannot hold that, so the jobs refuse it,
    next test; only the embedding is compared.)"""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_embedding_A" in name or "lora_B" in name:
                param.normal_(std=0.1)
    out = dict(hf_named_weights(peft_model, stage=0))
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert torch.allclose(out[name], merged[name], atol=1e-6), name
    assert not torch.allclose(out["model.embed_tokens.weight"], model.state_dict()["model.embed_tokens.weight"])


def test_an_adapter_on_one_side_of_a_tied_embedding_is_refused(model):
    """stories260K ties lm_head to embed_tokens. An adapter on either trains two matrices where the merged export
    and the engines hold one (PEFT's own merge then changed the other side too: logits 4.8-151 off on a tiny
    Llama), so apply_lora refuses it; the attention projections alone are fine."""
    from actors import modeling
    from common.config import LoraConfig

    assert modeling.tied_embedding_modules(model) == {"model.embed_tokens", "lm_head"}
    for side in ("embed_tokens", "lm_head", "model.embed_tokens"):  # a short name or a dotted path
        with pytest.raises(ValueError, match=rf"lora.target_modules \['{side}'\]: this model ties its input "
                                             rf"embedding and output head"):
            modeling.apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, target_modules=["q_proj", side]))
    adapted = modeling.apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, target_modules=["q_proj"]))
    assert any("lora_A" in name for name, _ in adapted.named_parameters())


def test_the_hf_engine_loads_packed_buckets(model):
    from actors.rollout.hf_engine import HFRolloutEngine
    from common.config import RolloutConfig

    engine = HFRolloutEngine(str(POLICY_PATH), RolloutConfig(max_new_tokens=4), 7, 256)
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for param in perturbed.parameters():  # tied: the embedding and lm_head move together
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    _, packed = unpacked(BucketPacker(64 << 10), borrowed_hf_weights(perturbed, 0), hf_tied_aliases(perturbed))
    assert engine.load_weights(*packed) == sum(len(bucket) for bucket in packed)
    loaded = dict(engine.model.named_parameters(remove_duplicate=False))
    for name, tensor in perturbed.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_flattened_parameters_are_views_of_one_aligned_buffer_that_training_updates():
    """flatten_parameters (a plain-engine policy at setup): the same parameters, values kept, each a view of one
    buffer at an ALIGN-byte boundary, a tied weight once; an optimizer built before still steps them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    flat = flatten_parameters(model)
    params = list(model.parameters())
    assert flat is not None and len(params) == len(before)  # the tied embedding once, as named_parameters gives it
    base = flat.data_ptr()
    for (name, param), start in zip(model.named_parameters(), [p.data_ptr() for p in params]):
        assert torch.equal(param, before[name]), name
        assert param.untyped_storage().data_ptr() == base and (start - base) % ALIGN == 0, name
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model(torch.tensor([[1, 5, 9]])).logits.sum().backward()
    optimizer.step()
    assert not torch.equal(params[0], before["model.embed_tokens.weight"])
    assert torch.equal(flat[:params[0].numel()].view(params[0].shape), params[0])  # the step wrote into the buffer
    mixed = torch.nn.Linear(2, 2)
    mixed.bias.data = mixed.bias.data.double()
    assert flatten_parameters(mixed) is None


def test_flattened_parameters_pack_as_one_buffer_per_bucket_with_nothing_staged():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32)
    flatten_parameters(model)
    named = list(borrowed_hf_weights(model, stage=0))
    total = sum(t.numel() * t.element_size() for _, t in named)
    for bucket_bytes in (1 << 30, total // 3):
        out, packed = unpacked(BucketPacker(bucket_bytes), named, hf_tied_aliases(model), stable=True)
        assert all(len(bucket.buffers) == 2 and bucket.buffers[0].nbytes == 0 for bucket in packed)
        assert len(packed) == 1 if bucket_bytes > total else len(packed) >= 3
        assert [name for name, _ in out] == [name for name, _ in named][:1] + ["lm_head.weight"] + [
            name for name, _ in named][1:]
        sent = dict(named)
        assert all(torch.equal(tensor, sent.get(name, sent["model.embed_tokens.weight"])) for name, tensor in out)
