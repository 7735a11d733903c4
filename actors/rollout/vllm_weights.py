"""How a CPU vLLM engine holds its linear layers' weights, and so what a weight sync costs (ppo.rollout.cpu_weights).

packed (vLLM's default): at load, each linear layer's weight is reordered into a oneDNN handler and the layer's own
tensor is dropped, so a sync must build every handler again. Through vLLM's layerwise reload that took 69-79 ms at
27.5M parameters (111 MB, fp32, 2 threads), about 12% of this machine's memory-copy bandwidth, half of it the
handler builds, which nothing in vLLM 0.32 updates in place; built straight from the synced weights
(actors/rollout/packed_rebuild.py, ppo.rollout.packed_sync) the sync takes 34 ms instead of 53-57 in one process.

plain: the layers keep their weights as loaded and multiply with torch's `F.linear`. This is vLLM's own path for a
layer it should not pack (`_cpu_skip_gemm_dispatch`, which its MLA layers set); here it is set for every linear
layer while the engine loads, and the output head, which vLLM packs with its weight kept, is pointed at `F.linear`
too. A sync is then the model's `load_weights`: each tensor copied into place by its layer's weight loader, with
nothing rebuilt: 16-20 ms at 27.5M in one process, 2.1 ms instead of 23 ms at 0.4M (the whole sync, with the
policy's gather and Ray's transport: bench/ppo_step.py --cpu-weights packed,plain). The price is the decode step's
matrix products: with a few dozen rows, torch's GEMM on an [out, in] weight is 1.2-1.9x slower than the prepacked
oneDNN one, so a 32 x 24-token rollout at 27.5M took 7-11% longer; at 0.4M, where the products are tiny, rollouts
took the same time.

auto (the default) takes plain for an fp32 model whose hidden size is at most PLAIN_UP_TO_HIDDEN, where it was measured
to lose nothing (hidden 64: 0.4M parameters; hidden 256: 6.95M, rollouts 0.54-0.60 s either way and a sync 5-7 ms
instead of 45-47 ms), and packed for any other, where the decode products come to outweigh the syncs (hidden 512:
rollouts 7-11% slower, about twice what the faster sync saves per step). Other dtypes were not measured: packed.

Only an unquantized model whose every weighted layer is a plain linear or embedding layer can be loaded this way
(`in_place_eligible`); any other (a mixture-of-experts layer, which vLLM repacks for its CPU kernels, or a quantized
model) is synced through vLLM's reload as with packed, and the engine says so in its log.
"""

from __future__ import annotations

import contextlib

from common.model_dir import config_json, text_shape

PLAIN_UP_TO_HIDDEN = 256  # auto's bound: the widest hidden size measured to sample as fast plain as packed (above)


def plain_layout(choice: str, model_path: str, dtype: str) -> bool:
    """Whether a CPU engine for this model keeps plain weights: as rollout.cpu_weights says, or for auto, an fp32
    model at most PLAIN_UP_TO_HIDDEN wide (a config.json without a width: packed)."""
    if choice != "auto":
        return choice == "plain"
    shape = text_shape(config_json(model_path))
    return dtype == "float32" and shape is not None and shape.hidden <= PLAIN_UP_TO_HIDDEN


@contextlib.contextmanager
def linear_weights_kept(enabled: bool):
    """While vLLM builds the engine's model, its CPU linear layers keep their weights and use `F.linear` instead of
    a oneDNN handler (vLLM reads the layer attribute `_cpu_skip_gemm_dispatch` once, as each layer's weights finish
    loading). The class attribute is removed again afterwards, so nothing else this process builds is affected."""
    if not enabled:
        yield
        return
    from vllm.model_executor.layers.linear import LinearBase

    before = LinearBase.__dict__.get("_cpu_skip_gemm_dispatch")
    LinearBase._cpu_skip_gemm_dispatch = True
    try:
        yield
    finally:
        if before is None:
            del LinearBase._cpu_skip_gemm_dispatch
        else:
            LinearBase._cpu_skip_gemm_dispatch = before


def in_place_eligible(model, quantization) -> str | None:
    """None when every weight of the engine's model can be updated by its `load_weights` alone; else why not."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    if quantization is not None:
        return f"the model is quantized ({quantization})"
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        method = getattr(module, "quant_method", None)
        if method is not None and not isinstance(method, (UnquantizedLinearMethod, UnquantizedEmbeddingMethod)):
            return f"layer {name} computes through {type(method).__name__}, which repacks its weights"
    return None


def make_plain(worker) -> str | None:
    """Run in the engine's worker after start: point every packed layer left (the embedding and output head, which
    vLLM packs with their weights kept) at `F.linear` over its own weight. Returns None when the model can then be
    synced in place, else the reason it cannot (`in_place_eligible`)."""
    import torch.nn.functional as F

    model = worker.model_runner.get_model()
    reason = in_place_eligible(model, worker.vllm_config.model_config.quantization)
    if reason is not None:
        return reason
    for name, module in model.named_modules():
        if getattr(module, "cpu_linear", F.linear) is not F.linear:
            if getattr(module, "weight", None) is None or module.weight.numel() == 0:
                return f"layer {name} was packed without its weight"
            module.cpu_linear = F.linear
    return None


def load_in_place(worker, weights: list) -> None:
    """Run in the engine's worker: (name, tensor) pairs in checkpoint names, copied into the model's parameters by
    their layers' weight loaders (fused projections included)."""
    worker.model_runner.get_model().load_weights(weights)


def is_plain(worker) -> bool:
    """Whether every layer of the engine's model multiplies with `F.linear` over its kept weight (the tests' probe)."""
    import torch.nn.functional as F

    layers = [m for m in worker.model_runner.get_model().modules() if hasattr(m, "cpu_linear")]
    return bool(layers) and all(m.cpu_linear is F.linear and m.weight.numel() > 0 for m in layers)
