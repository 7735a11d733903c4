"""A plain-layout engine whose weights are the synced buckets themselves, where Ray's object store put them
(ppo.rollout.zero_copy_sync).

With plain weights (actors/rollout/vllm_weights.py) a sync copies every tensor from the store into the engine's
own parameters. Those bytes are already in memory every process on the node can read, mostly laid out as the
engine needs them: each bucket is one object in the store, its weights side by side in the order the policy packed
them (actors/weights.py), so a fused projection's parts (q, k and v for qkv_proj; gate and up for gate_up_proj) lie
back to back as vLLM stacks them. Here each such parameter is pointed at its bytes instead (`param.data = view`),
and only the others are loaded into the engine's own memory: stacked here where their parts lie apart (split
between two buckets, or with another weight between them: Qwen2's biases follow each of its q, k and v weights),
and by vLLM's loader where they do not stack to the parameter's shape (an embedding whose vocabulary vLLM pads to a
multiple of 64 rows). A sync then costs the policy's one copy into the store and little or no copy in the engine,
and the engines of a node share one copy of what they view. bench/ppo_step.py --zero-copy on,off measures it.

The engine holds the buckets it views until the next sync's are in place: a bucket read from the store stays
mapped and pinned there while the engine holds it, so the views stay valid, and the store frees it once the engine
lets go.

Checked rather than assumed:
- Which checkpoint weights make a parameter comes from its name and the model class's own
  `packed_modules_mapping` (vLLM's map of its fused layers), and the first sync through the store proves it: the
  engine loads that sync with vLLM's loader as before, then compares every parameter with its parts stacked. A
  model whose loader changes a weight on the way (GPT-2, whose Conv1D weights vLLM transposes; any renamed or
  scaled weight) fails that comparison, and its syncs keep using vLLM's loader, with a warning naming the
  parameter. tests/ray/test_families_vllm.py records what each of the seven families views.
- Every later sync is matched against the model again: one with a part missing or a weight left over is loaded
  by vLLM's loader, with a warning; a parameter whose parts do not stack to its dtype and shape is loaded by
  vLLM's loader alone, the others still viewed.
- Nothing writes into the views: the store's buffers are read-only; a parameter loaded into gets private memory
  first when it was a view, and vLLM's loader loads a whole sync only after every view was given a private copy
  (`release`).
"""

from __future__ import annotations

import ctypes
import weakref
from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch

from actors.weights import PackedBucket


def in_store(buckets) -> bool:
    """Whether every bucket came out of Ray's object store: PackedBuckets whose buffers are the store's read-only
    shared memory (the collective path's buckets are tensors the receiver reuses, and a list of pairs is a copy of
    its own)."""
    return bool(buckets) and all(
        isinstance(bucket, PackedBucket)
        and all(isinstance(buffer, np.ndarray) and not buffer.flags.writeable for buffer in bucket.buffers)
        for bucket in buckets)


def checkpoint_names(name: str, fused: dict[str, list[str]]) -> list[str]:
    """The checkpoint weights a parameter is made of, in the order vLLM stacks them: `model.layers.0.self_attn.
    qkv_proj.weight` with {"qkv_proj": ["q_proj", "k_proj", "v_proj"]} is the q, k and v projections' weights."""
    module, _, leaf = name.rpartition(".")
    parent, _, layer = module.rpartition(".")
    parts = fused.get(layer)
    if not parts:
        return [name]
    return [".".join(filter(None, (parent, part, leaf))) for part in parts]


@dataclass(frozen=True)
class Target:
    """A parameter and what it is made of, read once per model (vLLM's parameters answer attribute reads through
    a __torch_function__ hook, slow enough to matter in a loop run at every sync)."""
    name: str
    param: torch.Tensor
    parts: tuple[str, ...]  # its checkpoint weights, stacked on the first dimension in this order
    shape: tuple[int, ...]
    dtype: torch.dtype


class Shaped(Protocol):
    """What fits and region read of a parameter: a Target, or a packed layer (actors/rollout/packed_rebuild.py)."""
    shape: tuple[int, ...]
    dtype: torch.dtype


_TARGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its Targets


def targets(model: torch.nn.Module) -> list[Target]:
    if model not in _TARGETS:
        fused = getattr(type(model), "packed_modules_mapping", None) or {}
        _TARGETS[model] = [Target(name, param, tuple(checkpoint_names(name, fused)), tuple(param.data.shape),
                                  param.data.dtype) for name, param in model.named_parameters()]
    return _TARGETS[model]


def fits(parts: list[torch.Tensor], target: Shaped) -> bool:
    """Whether `parts` stacked on the first dimension make a tensor of the target's shape and dtype."""
    rows, tail = 0, target.shape[1:]
    for part in parts:
        if part.dtype != target.dtype or part.device.type != "cpu" or tuple(part.shape[1:]) != tail:
            return False
        rows += part.shape[0] if part.dim() else 1
    return rows == (target.shape[0] if target.shape else 1)


def region(parts: list[torch.Tensor], target: Shaped) -> torch.Tensor | None:
    """A tensor shaped as the target parameter over the bytes of `parts` (which fit it) when they lie back to back
    in memory, in order; else None. One part is returned as it is; several get a view of their whole span, which
    is valid for as long as the buffer holding them is (the caller holds it)."""
    if not all(part.is_contiguous() for part in parts):
        return None
    if len(parts) == 1:
        return parts[0].view(target.shape)
    start = end = parts[0].data_ptr()
    for part in parts:
        if part.data_ptr() != end:
            return None
        end += part.numel() * part.element_size()
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * (end - start)).from_address(start))
    return torch.from_numpy(raw).view(target.dtype).view(target.shape)


def stacked(parts: list[torch.Tensor], into: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(slice of `into`, part) pairs: where each part lands when the parts are stacked on the first dimension."""
    flat, offset = into.view(-1), 0
    for part in parts:
        yield flat[offset:offset + part.numel()], part.reshape(-1)
        offset += part.numel()


def plan(model: torch.nn.Module, weights: list[tuple[str, torch.Tensor]]) -> list | str:
    """[(Target, its parts in `weights`, how it takes them)] for every parameter of the model, or why the sync does
    not match the model. How: a view of the parts (a tensor) where they lie side by side as the parameter stacks
    them; "stack" where they stack to its shape but lie apart (a fused projection split between two buckets, or
    with another weight between its parts), copied by stacking; "loader" where they do not stack to its shape (a
    vocabulary vLLM pads to a multiple of 64 rows), left to vLLM's loader. Every received weight must be some
    parameter's part, or share its bytes with one (a tied output head sent under both names)."""
    received = dict(weights)
    steps, used, viewed = [], set(), set()
    for target in targets(model):
        missing = [part for part in target.parts if part not in received]
        if missing:
            return f"parameter {target.name} needs {missing[0]}, which the sync does not send under that name"
        parts = [received[part] for part in target.parts]
        how = region(parts, target) if fits(parts, target) else "loader"
        steps.append((target, parts, "stack" if how is None else how))
        used.update(target.parts)
        viewed.update(part.data_ptr() for part in parts)
    for name, tensor in weights:
        if name not in used and tensor.data_ptr() not in viewed:
            return f"the sync sends {name}, which is no parameter's weight"
    return steps


_VIEWING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → names of its parameters that are views


def adopt(worker, weights: list, verified: bool) -> tuple[int, int] | str:
    """Run in the engine's worker: point each parameter at its bytes in `weights` (views of the store's buffers)
    where they lie side by side, and load the others into the parameter's own memory (stacked here, or by vLLM's
    loader). Unless `verified`, every parameter that stacks must first equal its parts stacked (vLLM's loader has
    just loaded all of `weights`: the proof that it takes them as they are), and only the views are set. Returns
    (parameters viewed, parameters), or why not, with nothing changed."""
    model = worker.model_runner.get_model()
    steps = plan(model, weights)
    if isinstance(steps, str):
        return steps
    if not verified:
        for target, parts, how in steps:
            if how != "loader" and not all(torch.equal(place, part)
                                           for place, part in stacked(parts, target.param.data)):
                return f"parameter {target.name} as vLLM loaded it differs from the weights it was loaded from"
    viewing = _VIEWING.setdefault(model, set())
    for target, _, how in steps:
        if not isinstance(how, torch.Tensor) and target.name in viewing:
            # Its memory is the last sync's bucket, read-only: a private copy first.
            target.param.data = torch.empty(target.shape, dtype=target.dtype)
            viewing.discard(target.name)
    if verified:
        for target, parts, how in steps:
            if how == "stack":
                for place, part in stacked(parts, target.param.data):
                    place.copy_(part)
        loaded = [pair for target, parts, how in steps if how == "loader" for pair in zip(target.parts, parts)]
        if loaded:
            model.load_weights(loaded)
    # The views of this sync's buckets last: should a copy or vLLM's loader above raise, no parameter views
    # buckets the engine does not hold (it lets the last sync's go only once this returns).
    for target, _, how in steps:
        if isinstance(how, torch.Tensor):
            target.param.data = how
            viewing.add(target.name)
    return len(viewing), len(steps)


def release(worker) -> None:
    """Run in the engine's worker: give every parameter that views the store a private copy of its values, so
    that the engine may copy into them and let go of the buckets it viewed."""
    model = worker.model_runner.get_model()
    viewing = _VIEWING.pop(model, set())
    for target in targets(model):
        if target.name in viewing:
            target.param.data = target.param.data.clone()
