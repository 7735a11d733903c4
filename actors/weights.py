"""Stream a trained model's full weights under Hugging Face names, LoRA adapters merged in.

Both the weight sync into vLLM and the final export read the policy through here. Under ZeRO-3 each
module's shards are gathered just in time (every rank must iterate, in the same order), so peak extra memory
is one module, never the whole model.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def _gathered(params: list[torch.nn.Parameter], stage: int):
    if stage == 3 and params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


def _to_host(tensor: torch.Tensor, owned: bool = False) -> torch.Tensor:
    """A CPU copy (`owned`: the tensor is already a private copy, so a CPU one is returned as it is). From a GPU the copy lands in pinned memory, which torch's caching host allocator hands
    back on the next sync: a pageable copy pays page faults and a staging copy on every tensor of every
    sync (measured at the Qwen2-0.5B shape on an H100: bench/gpu_qwen_shape.py, sync section)."""
    if not tensor.is_cuda:
        return tensor if owned else tensor.to("cpu", copy=True)
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor)


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


def hf_named_weights(module: torch.nn.Module, stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face parameter name, full CPU tensor) for every weight of the model behind `module`.

    For a PEFT model, each LoRA-wrapped layer yields base weight + its adapter delta under the base layer's
    name, and the adapter matrices themselves are not yielded: vLLM and `from_pretrained` see a plain model.
    Tied input/output embeddings are yielded under both names: vLLM's in-place reload does not keep the tie
    (measured: a reload without lm_head.weight left logprobs 0.65 nats off).
    """
    base = module.get_base_model() if hasattr(module, "peft_config") else module
    tied = tied_embedding_names(base)
    for name, tensor in _untied_weights(module, stage):
        yield name, tensor
        if tied is not None and name == tied[0]:
            yield tied[1], tensor


def _untied_weights(module: torch.nn.Module, stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    if not hasattr(module, "peft_config"):
        for name, param in module.named_parameters():
            with _gathered([param], stage):
                yield name, _to_host(param.detach())
        return
    from peft.tuners.lora import LoraLayer

    base = module.get_base_model()
    lora_prefixes: list[str] = []
    for name, sub in base.named_modules():
        if any(name.startswith(prefix + ".") for prefix in lora_prefixes):
            continue  # inside a LoRA layer: its parameters were merged when the layer itself was visited
        if isinstance(sub, LoraLayer):
            lora_prefixes.append(name)
            yield from _merged_lora_layer(name, sub, stage)
            continue
        for pname, param in sub.named_parameters(recurse=False):
            with _gathered([param], stage):
                yield (f"{name}.{pname}" if name else pname), _to_host(param.detach())


def _merged_lora_layer(name: str, layer, stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    with _gathered(list(layer.parameters()), stage):
        weight = layer.base_layer.weight.detach().clone()
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                weight += layer.get_delta_weight(adapter).to(weight.dtype)
        yield f"{name}.weight", _to_host(weight, owned=True)  # a clone with the deltas added
        if getattr(layer.base_layer, "bias", None) is not None:
            yield f"{name}.bias", _to_host(layer.base_layer.bias.detach())


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
