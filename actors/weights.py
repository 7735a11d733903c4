"""Stream a trained model's full weights under Hugging Face names, LoRA adapters merged in, and pack them into
buckets for the weight sync.

Both the weight sync into the rollout engines and the final export read the policy through here. Under ZeRO-3 each
module's shards are gathered just in time (every rank must iterate, in the same order), so peak extra memory
is one module, never the whole model.

The sync ships `PackedBucket`s: a few uint8 numpy buffers per bucket plus a (name, buffer, offset, dtype, shape)
entry per weight. Ray's object store writes numpy buffers in one copy and hands the reader views of its shared
memory, so an engine reads the weights where the store put them. Lists of torch tensors, as shipped before, went
through torch's pickler on both sides (0.46 s of a 0.54 s sync at 27.5M parameters; now 12 ms for the put).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

ALIGN = 64  # bytes: every packed weight starts on a cache line, so each view is aligned for any dtype and SIMD


@contextlib.contextmanager
def _gathered(params: list[torch.nn.Parameter], stage: int):
    if stage == 3 and params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


def _to_host(tensor: torch.Tensor, owned: bool = False) -> torch.Tensor:
    """A CPU copy (`owned`: the tensor is already a private copy, so a CPU one is returned as it is). From a GPU
    the copy lands in pinned memory, which torch's caching host allocator hands back on the next sync: a pageable
    copy pays page faults and a staging copy on every tensor of every sync (measured at the Qwen2-0.5B shape on an
    H100: bench/gpu_qwen_shape.py, sync section)."""
    if not tensor.is_cuda:
        return tensor if owned else tensor.to("cpu", copy=True)
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor)


def flatten_parameters(module: torch.nn.Module) -> torch.Tensor | None:
    """Move the module's parameters into one buffer, in order, each starting on an ALIGN-byte boundary, and make
    each parameter a view of it; returns the buffer, or None (nothing moved) unless every parameter is on the CPU
    in one dtype.

    The weight sync then packs the policy as one buffer per bucket (BucketPacker merges views that follow each
    other in one buffer), which Ray's put copies in a few large copies: it copies each buffer apart, and many
    parameter-sized ones cost it more than the bytes (27.5M parameters in 76 buffers: about 2.4 times a single
    buffer's put here). The parameters stay the same objects, so an optimizer built on them is unaffected."""
    params = list(dict.fromkeys(module.parameters()))  # a tied weight once
    if not params or any(p.device.type != "cpu" for p in params) or len({p.dtype for p in params}) != 1:
        return None
    step = max(ALIGN // params[0].element_size(), 1)
    offsets, total = [], 0
    for param in params:
        total = -(-total // step) * step
        offsets.append(total)
        total += param.numel()
    flat = torch.zeros(total, dtype=params[0].dtype)
    with torch.no_grad():
        for param, offset in zip(params, offsets):
            view = flat[offset:offset + param.numel()].view(param.shape)
            view.copy_(param.data)
            param.data = view
    return flat


def tied_embedding_names(model: torch.nn.Module) -> tuple[str, str] | None:
    """(input embedding name, output embedding name) when the two share one weight, else None."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return None
    inp, out = get_in(), get_out()
    if inp is None or out is None or out.weight is not inp.weight:
        return None
    names = {id(sub): name for name, sub in model.named_modules()}
    return f"{names[id(inp)]}.weight", f"{names[id(out)]}.weight"


def hf_tied_aliases(module: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """{name: further names of the same tensor} for the model behind `module` (a tied output embedding), else {}.

    Engines are sent every name: vLLM's in-place reload does not keep the tie (measured: a reload without
    lm_head.weight left logprobs 0.65 nats off)."""
    base = module.get_base_model() if hasattr(module, "peft_config") else module
    tied = tied_embedding_names(base)
    return {} if tied is None else {tied[0]: (tied[1],)}


def hf_named_weights(module: torch.nn.Module, stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face parameter name, full CPU tensor of its own) for every weight of the model behind `module`.

    For a PEFT model, each LoRA-wrapped layer yields base weight + its adapter delta under the base layer's
    name, and the adapter matrices themselves are not yielded: vLLM and `from_pretrained` see a plain model.
    Tied input/output embeddings are yielded under both names (hf_tied_aliases).
    """
    aliases = hf_tied_aliases(module)
    for name, tensor, owned in _untied_weights(module, stage):
        tensor = _to_host(tensor, owned)
        yield name, tensor
        for alias in aliases.get(name, ()):
            yield alias, tensor


def borrowed_hf_weights(module: torch.nn.Module, stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """hf_named_weights without its copies: each tensor (on the model's device) is valid only until the iterator
    advances (a ZeRO-3 gather ends there) and must be read, not kept. Tied aliases are not repeated."""
    for name, tensor, _ in _untied_weights(module, stage):
        yield name, tensor


def _untied_weights(module: torch.nn.Module, stage: int) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, owned): `owned` when the tensor is a fresh result (a merged LoRA weight), not a parameter."""
    if not hasattr(module, "peft_config"):
        for name, param in module.named_parameters():
            with _gathered([param], stage):
                yield name, param.detach(), False
        return
    from peft.tuners.lora import LoraLayer

    base = module.get_base_model()
    lora_prefixes: list[str] = []
    seen: set[int] = set()  # a parameter two modules share (a tied embedding) once, under its first name
    for name, sub in base.named_modules():
        if any(name.startswith(prefix + ".") for prefix in lora_prefixes):
            continue  # inside a LoRA layer: its parameters were merged when the layer itself was visited
        if isinstance(sub, LoraLayer):
            lora_prefixes.append(name)
            yield from _merged_lora_layer(name, sub, stage)
            continue
        for pname, param in sub.named_parameters(recurse=False):
            if id(param) in seen:
                continue  # its other names are hf_tied_aliases', as for a model without adapters
            seen.add(id(param))
            with _gathered([param], stage):
                yield (f"{name}.{pname}" if name else pname), param.detach(), False


def _merged_lora_layer(name: str, layer, stage: int) -> Iterator[tuple[str, torch.Tensor, bool]]:
    with _gathered(list(layer.parameters()), stage):
        weight, owned = layer.base_layer.weight.detach(), False
        for adapter in layer.active_adapters:
            # An Embedding layer keeps its adapters in lora_embedding_A/B, not lora_A (they were skipped, so an
            # adapted embed_tokens reached the engines and the export without its delta).
            if adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {}):
                weight, owned = weight + layer.get_delta_weight(adapter).to(weight.dtype), True
        yield f"{name}.weight", weight, owned
        if getattr(layer.base_layer, "bias", None) is not None:
            yield f"{name}.bias", layer.base_layer.bias.detach(), False


def buckets(named: Iterator[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into lists of about `bucket_bytes` each (a tensor is never split)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        bucket.append((name, tensor))
        size += tensor.numel() * tensor.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


@dataclass(frozen=True)
class PackedBucket:
    """Weights as a few byte buffers plus where each weight lies in them. Iterating yields (name, tensor) views of
    the buffers, no copies; an alias is a view of the same bytes as its source. Views of buffers from Ray's
    object store are read-only: copy from them, never into them."""

    # uint8: numpy arrays, each one out-of-band buffer for Ray's pickler; or tensors on the weights' device (the
    # collective path, actors/weight_collective.py)
    buffers: tuple[np.ndarray | torch.Tensor, ...]
    entries: tuple[tuple[str, int, int, str, tuple[int, ...]], ...]  # (name, buffer, byte offset, dtype name, shape)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        with warnings.catch_warnings():  # the store's buffers are read-only, and torch warns about that
            warnings.simplefilter("ignore", UserWarning)
            flat = [buffer if isinstance(buffer, torch.Tensor) else torch.from_numpy(buffer)
                    for buffer in self.buffers]
        for name, index, offset, dtype_name, shape in self.entries:
            dtype = getattr(torch, dtype_name)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes == 0:  # an empty slice cannot be viewed as a wider dtype
                yield name, torch.empty(shape, dtype=dtype, device=flat[index].device)
                continue
            yield name, flat[index][offset:offset + nbytes].view(dtype).view(shape)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.buffers)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _follows(run: list, tensor: torch.Tensor, start: int) -> bool:
    """Whether `tensor` (starting at byte `start` of its storage) comes next in `run`'s storage, after at most an
    alignment's padding."""
    return (tensor.untyped_storage().data_ptr() == run[0].data_ptr() and 0 <= start - run[2] < ALIGN)


class BucketPacker:
    """Packs (name, tensor) streams into PackedBuckets of at most `bucket_bytes` (a larger tensor gets a bucket of
    its own) with one copy at most before Ray's.

    A CPU tensor that stays valid until its bucket is shipped (`stable`) goes in as a buffer of its own, a view
    of the tensor: ray.put makes the only copy. Any other tensor (a ZeRO-3 gather that ends when the stream
    advances, a GPU tensor) is copied into a host staging buffer that is reused from bucket to bucket and sync to
    sync: fresh memory would pay a page fault per 4 KiB (a 110 MB copy here runs at ~18 GB/s into warm memory,
    ~2.4 GB/s into new). From a GPU the staging buffer is pinned memory.

    With `device` (the collective path, actors/weight_collective.py), every tensor is staged, in a buffer on that
    device, and each bucket holds that buffer as a tensor: one buffer per bucket to broadcast, and from a GPU no
    trip through the host."""

    def __init__(self, bucket_bytes: int, device: torch.device | None = None):
        self.bucket_bytes, self.device = bucket_bytes, device
        self._staging = torch.empty(0, dtype=torch.uint8, device=device)

    def pack(self, named: Iterator[tuple[str, torch.Tensor]], aliases: dict[str, tuple[str, ...]] | None = None,
             stable: bool = False) -> Iterator[PackedBucket]:
        """Ship each bucket (ray.put copies it) or copy it before asking for the next: the staging buffer is
        reused, and stable tensors may change after that. `aliases` gives further names for a weight
        (hf_tied_aliases): its bytes go once, its entry once per name. Tensors are read only while it is their
        turn in `named` (borrowed_hf_weights). Stable tensors that follow each other in one storage (a policy whose
        parameters were flattened: flatten_parameters) share one buffer, gaps of alignment padding included."""
        aliases = aliases or {}
        runs: list[list] = []  # stable tensors' spans, one buffer each: [storage, first byte, end byte]
        entries: list[tuple[str, int, int, str, tuple[int, ...]]] = []
        staged = size = 0  # bytes used in the staging buffer; bytes in the bucket (with alignment padding)
        for name, tensor in named:
            nbytes = tensor.numel() * tensor.element_size()
            as_view = stable and not tensor.is_cuda and self.device is None
            if as_view and not tensor.is_contiguous():
                tensor = tensor.contiguous()  # a copy of its own, kept alive by its run until the bucket ships
            start = tensor.storage_offset() * tensor.element_size() if as_view else 0
            follows = as_view and runs and _follows(runs[-1], tensor, start)
            padding = (start - runs[-1][2] if follows else 0) if as_view else _aligned(staged) - staged
            if entries and size + padding + nbytes > self.bucket_bytes:
                yield self._bucket(staged, runs, entries)
                runs, entries, staged, size, padding, follows = [], [], 0, 0, 0, False
            if as_view:
                if not follows:
                    runs.append([tensor.untyped_storage(), start, start])
                index, offset = len(runs), start - runs[-1][1]
                runs[-1][2] = start + nbytes
            else:
                index, offset = 0, staged + padding
                self._make_room(offset + nbytes, staged, pinned=tensor.is_cuda)
                self._staging[offset:offset + nbytes].view(tensor.dtype).view(tensor.shape).copy_(tensor)
                staged = offset + nbytes
            dtype_name, shape = str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape)
            entries += [(n, index, offset, dtype_name, shape) for n in (name, *aliases.get(name, ()))]
            size += padding + nbytes
        if entries:
            yield self._bucket(staged, runs, entries)

    def _bucket(self, staged: int, runs: list[list], entries: list) -> PackedBucket:
        """Buffer 0 is the used part of the staging buffer (possibly empty), then one buffer per run of stable
        tensors (a uint8 view of their storage, no copy)."""
        used = self._staging[:staged]
        own = [torch.empty(0, dtype=torch.uint8).set_(storage, first, (end - first,)).numpy()
               for storage, first, end in runs]
        return PackedBucket((used if self.device is not None else used.numpy(), *own), tuple(entries))

    def _make_room(self, needed: int, used: int, pinned: bool) -> None:
        pinned = pinned and self.device is None
        if self._staging.numel() >= needed and (not pinned or self._staging.is_pinned()):
            return
        size = max(needed, min(2 * self._staging.numel(), self.bucket_bytes))
        grown = torch.empty(size, dtype=torch.uint8, device=self.device, pin_memory=pinned)
        grown[:used].copy_(self._staging[:used])
        self._staging = grown
