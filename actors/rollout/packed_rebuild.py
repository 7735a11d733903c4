"""A weight sync into a CPU vLLM engine with packed weights, without vLLM's reload (ppo.rollout.packed_sync).

A packed engine (actors/rollout/vllm_weights.py) holds each linear layer's weight only as a oneDNN handler, the
weight reordered into oneDNN's blocked layout, and drops the layer's own tensor. vLLM's `reload_weights` brings new
weights in by restoring every layer's original parameters, loading the checkpoint names into them layer by layer
through their weight loaders, and then running each layer's `process_weights_after_loading`, which builds the
handler again. Only the loading of the dropped weights needs the restore: the handler reads the new weight once
and keeps its own reordered copy. So here each such layer gets a tensor of the synced weights, stacked as vLLM fuses
them (q, k and v for qkv_proj; gate and up for gate_up_proj); everything else (the embedding and the output head,
which keep their weights beside a handler, norms, biases) is loaded by the model's `load_weights`; and then vLLM's
own post-load step runs over the whole model, as after its first load (`process_weights_after_loading` of
vllm/model_executor/model_loader/utils.py: each layer's handler built from its weight, which is dropped again, and
whatever an attention layer or the model derives from its weights). The stack is a view of the synced bytes where its
parts lie back to back (a bucket in Ray's object store; actors/rollout/store_views.py), so the only copy in the
engine is the handler's reorder; a layer that keeps its weight after all (vLLM's plain fallback when oneDNN refuses
it) is given a private copy, so nothing the engine keeps points into the store.

Measured in one process at 27.5M parameters (hidden 512, fp32, 2 threads): 34 ms a sync against 53-57 ms for
vLLM's reload, of which 21-25 ms are oneDNN's reorders (a two-thread clone of the same bytes takes 9 ms).

Checked rather than assumed:
- What the layers are made of: the first sync loads through vLLM's reload, then every packed layer's output on a
  probe batch is recorded, the model is rebuilt from the same weights, and each output must be equal bit for bit.
  A model whose loader changes a weight on the way (GPT-2's Conv1D weights, which vLLM transposes) fails that, and
  its engine keeps vLLM's reload, with a warning naming the layer.
- What the probe cannot see is refused up front (`rebuild_or_why`): quantized or mixture-of-experts layers (as for
  plain weights), layers split over ranks, convolution weights vLLM prepacks in place, and the Zen CPU path, whose
  kernels keep the very tensor they were given.
- A later sync that does not match the layers (a part missing, of another shape or dtype) is loaded by vLLM's
  reload, with a warning; so is one whose rebuild fails half way (the engine then keeps the reload).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from actors.rollout.store_views import checkpoint_names, fits, region


@dataclass(frozen=True)
class PackedLayer:
    """A layer vLLM multiplies through a oneDNN handler, read once per model."""
    name: str
    module: torch.nn.Module
    parts: tuple[str, ...]  # the checkpoint weights stacked into its weight, in vLLM's order
    shape: tuple[int, int]  # its weight's [out, in]
    dtype: torch.dtype
    dropped: bool  # vLLM dropped the weight (linear layers): rebuilt from the parts; else loaded, then rebuilt


_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its PackedLayers, or why not


def packed_layers(model: torch.nn.Module) -> list[PackedLayer] | str:
    """Every layer of the model that multiplies through a handler, or why a sync cannot rebuild them: a layer
    packed without its weight that is not an unquantized linear layer (whose shape is then unknown here)."""
    if model not in _LAYERS:
        _LAYERS[model] = _find_layers(model)
    return _LAYERS[model]


def _find_layers(model: torch.nn.Module) -> list[PackedLayer] | str:
    import torch.nn.functional as F
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    fused = getattr(type(model), "packed_modules_mapping", None) or {}
    layers = []
    for name, module in model.named_modules():
        if getattr(module, "cpu_linear", F.linear) is F.linear:
            continue
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if weight is not None and weight.numel() > 0:
            shape, dtype, dropped = tuple(weight.shape), weight.dtype, False
        elif isinstance(method, UnquantizedLinearMethod) and getattr(module, "tp_size", 1) == 1:
            # ReplicatedLinear names no per-partition input size: its input is whole, as every layer's of one rank.
            inputs = getattr(module, "input_size_per_partition", getattr(module, "input_size", None))
            if inputs is None:
                return f"layer {name} was packed without its weight, and names no input size"
            shape = (sum(module.output_partition_sizes), inputs)
            dtype, dropped = module.params_dtype, True
        else:
            return f"layer {name} was packed without its weight, and is no unquantized linear layer of one rank"
        if not hasattr(method, "process_weights_after_loading"):
            return f"layer {name} has no quantization method to pack its weight with"
        layers.append(PackedLayer(name, module, tuple(checkpoint_names(f"{name}.weight", fused)), shape, dtype,
                                  dropped))
    return layers or "no layer of the model is packed"


def rebuild_or_why(worker) -> str | None:
    """Run in the engine's worker at start: None when its syncs can rebuild the packed layers, else why not."""
    from vllm.platforms import current_platform

    from actors.rollout.vllm_weights import in_place_eligible

    model = worker.model_runner.get_model()
    if worker.vllm_config.parallel_config.tensor_parallel_size != 1:
        return "the engine's layers are split over several ranks"
    reason = in_place_eligible(model, worker.vllm_config.model_config.quantization)
    if reason is not None:
        return reason
    if current_platform.is_zen_cpu():
        return "vLLM's Zen CPU kernels keep the weight tensors they were built from"
    for name, module in model.named_modules():
        if hasattr(module, "_cpu_unpacked_conv_weight"):
            return f"layer {name}'s convolution weight is prepacked in place"
    try:
        layers = packed_layers(model)
    except Exception as exc:  # a layer class this module does not know: the reload it is
        return f"the packed layers could not be read ({type(exc).__name__}: {exc})"
    return layers if isinstance(layers, str) else None


def dropped_weights(layers: list[PackedLayer], received: dict) -> list[torch.Tensor] | str:
    """Each dropped layer's new weight, stacked from its parts (a view where they lie back to back), or why the sync
    does not match the layers."""
    stacks = []
    for layer in layers:
        if not layer.dropped:
            continue
        missing = [part for part in layer.parts if part not in received]
        if missing:
            return f"layer {layer.name} needs {missing[0]}, which the sync does not send under that name"
        parts = [received[part] for part in layer.parts]
        if not fits(parts, layer):
            return f"the parts of layer {layer.name} do not stack to its weight's shape {list(layer.shape)}"
        view = region(parts, layer)
        stacks.append(view if view is not None else torch.cat(parts).view(layer.shape))
    return stacks


def rebuild(worker, weights: list) -> str | None:
    """Run in the engine's worker: load (name, tensor) pairs in checkpoint names: the dropped layers' parts as
    handlers built from them by vLLM's `process_weights_after_loading`, the rest by the model's `load_weights` (and
    the kept layers' handlers rebuilt after it). Returns None, or why the sync does not match the layers, with
    nothing changed."""
    model = worker.model_runner.get_model()
    layers = packed_layers(model)
    if isinstance(layers, str):
        return layers
    received = dict(weights)
    stacks = dropped_weights(layers, received)
    if isinstance(stacks, str):
        return stacks
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    # In vLLM's order: every weight loaded (biases included, which a handler may convert), then its post-load step.
    rebuilt = {part for layer in layers if layer.dropped for part in layer.parts}
    model.load_weights([(name, tensor) for name, tensor in weights if name not in rebuilt])
    dropped = [layer for layer in layers if layer.dropped]
    for layer, weight in zip(dropped, stacks):  # the handler reorders a copy of it; vLLM then drops it again
        layer.module.weight = torch.nn.Parameter(weight, requires_grad=False)
    process_weights_after_loading(model, worker.vllm_config.model_config, torch.device("cpu"))
    for layer in dropped:
        if layer.module.weight.numel():  # kept after all (vLLM's plain fallback): not the store's bytes
            layer.module.weight = torch.nn.Parameter(layer.module.weight.detach().clone(), requires_grad=False)
    return None


def probe_outputs(layers: list[PackedLayer]) -> list[torch.Tensor]:
    """Each packed layer's output on the same seeded batch of 3 inputs: what rebuild_agrees compares."""
    generator = torch.Generator().manual_seed(0)
    outputs = []
    for layer in layers:
        probe = torch.randn(3, layer.shape[1], generator=generator).to(layer.dtype)
        outputs.append(layer.module.cpu_linear(probe, layer.module.weight, None))
    return outputs


def rebuild_agrees(worker, weights: list) -> str | None:
    """Run in the engine's worker right after vLLM's reload loaded `weights`: rebuild the packed layers from the same
    weights, and compare every one's output on a probe batch with the reload's, bit for bit. Returns None when all
    are equal, else the first difference (the layers are then as the rebuild left them: reload again)."""
    layers = packed_layers(worker.model_runner.get_model())
    if isinstance(layers, str):
        return layers
    with torch.no_grad():
        before = probe_outputs(layers)
        reason = rebuild(worker, weights)
        if reason is not None:
            return reason
        after = probe_outputs(layers)
    for layer, old, new in zip(layers, before, after):
        if not torch.equal(old, new):
            return f"layer {layer.name} rebuilt from the synced weights differs from vLLM's reload of them"
    return None
