"""A PackedBucket through Ray's real object store: the reader gets the exact weights (bf16 included) as views of
the store's shared memory, not a deserialised copy, and tied names still share one copy of the bytes."""

from __future__ import annotations

import pytest
import torch

from actors.weights import BucketPacker

pytestmark = [pytest.mark.ray]


def read_bucket(bucket) -> dict:
    """In another process: what an engine sees when Ray hands it a bucket."""
    views = dict(bucket)
    return {"writeable": any(buffer.flags.writeable for buffer in bucket.buffers),
            "shared_tie": views["lm_head.weight"].data_ptr() == views["embed.weight"].data_ptr(),
            "tensors": {name: tensor.clone() for name, tensor in views.items()}}


@pytest.mark.parametrize("stable", [False, True], ids=["staged", "views"])
def test_a_packed_bucket_arrives_as_a_view_of_the_object_store(ray_session, stable):
    import ray

    generator = torch.Generator().manual_seed(0)
    weights = {"embed.weight": torch.randn(64, 32, generator=generator),
               "norm.weight": torch.randn(32, generator=generator).to(torch.bfloat16),
               "proj.weight": torch.randn(32, 48, generator=generator).to(torch.bfloat16)}
    (bucket,) = BucketPacker(1 << 20).pack(iter(weights.items()), {"embed.weight": ("lm_head.weight",)}, stable)
    ref = ray.put(bucket)
    got = ray.get(ray.remote(num_cpus=0.1)(read_bucket).remote(ref))
    assert not got["writeable"]  # a read-only buffer: the object store's memory, not an unpickled copy
    assert got["shared_tie"]
    assert got["tensors"].keys() == {*weights, "lm_head.weight"}
    for name, tensor in {**weights, "lm_head.weight": weights["embed.weight"]}.items():
        assert got["tensors"][name].dtype == tensor.dtype and torch.equal(got["tensors"][name], tensor), name
