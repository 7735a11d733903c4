"""The Hugging Face rollout engine against a real vLLM engine actor (CPU build) on the tiny policy: same greedy
answers, and after the same weight sync, the same stopped-at-EOS responses with the same log-probs."""

from __future__ import annotations

import copy

import pytest
import ray
import torch

from actors.rollout.hf_engine import HFRolloutEngine
from actors.rollout.vllm_engine import RolloutEngine
from actors.threads import ThreadPlan, node_cores
from actors.weights import hf_named_weights
from common.config import RolloutConfig
from tests.conftest import POLICY_PATH

pytestmark = [pytest.mark.ray]

NEW_TOKENS = 24
EOS = 2
TEXTS = ["Once upon a time", "Lily and Tom went to the park.", "The cat", "A big red ball rolled down the hill and"]


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(POLICY_PATH))
    return [tokenizer(text)["input_ids"] for text in TEXTS]


@pytest.fixture(scope="module")
def engines(ray_session):
    cfg = RolloutConfig(max_new_tokens=NEW_TOKENS)
    # Sampling alone (PPO's phase 1): the node's cores, whatever one thread Ray's worker started with.
    vllm = ray.remote(num_cpus=0.5)(RolloutEngine).remote(str(POLICY_PATH), cfg, 0, 256, "float32", None,
                                                          ThreadPlan({"generate": 1, "load_weights": 1}))
    hf = HFRolloutEngine(str(POLICY_PATH), cfg, 0, 256)
    ray.get(vllm.ping.remote())
    yield vllm, hf
    ray.kill(vllm)


def test_hf_greedy_answers_match_vllm(engines, prompts):
    vllm, hf = engines
    assert hf.greedy(prompts, NEW_TOKENS) == ray.get(vllm.greedy.remote(prompts, NEW_TOKENS))


def test_after_the_same_weight_sync_both_engines_stop_at_eos_alike(engines, prompts):
    """The tiny policy never says EOS on its own; giving EOS a scaled copy of a common token's output row makes
    every greedy answer stop part-way, so EOS handling (kept in response_ids, finish 'stop') is compared."""
    from transformers import AutoModelForCausalLM

    vllm, hf = engines
    model = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32)
    eos_happy = copy.deepcopy(model)
    with torch.no_grad():
        embedding = eos_happy.model.embed_tokens.weight  # tied to lm_head
        embedding[EOS] = 1.2 * embedding[426]
    named = list(hf_named_weights(eos_happy, stage=0))
    assert hf.load_weights(named) == ray.get(vllm.load_weights.remote(named)) == len(named)
    ours = hf.generate(prompts, temperature=0.0)
    theirs = ray.get(vllm.generate.remote(prompts, 0.0))
    assert [s.response_ids for s in ours] == [s.response_ids for s in theirs]
    assert all(s.finish_reason == "stop" and s.response_ids[-1] == EOS for s in ours + theirs)
    assert min(len(s.response_ids) for s in ours) > 1  # stopped part-way, not at once
    for a, b in zip(ours, theirs):
        assert torch.allclose(torch.tensor(a.response_logprobs), torch.tensor(b.response_logprobs), atol=1e-4)


def test_the_kv_cache_holds_what_the_config_asks(engines):
    """Unfitted (no max_sequences), the engine takes all of kv_cache_gib; fitted to 100 sequences of 256 tokens, room
    for those and one more, whatever size the runtime exports to every Ray worker (VLLM_CPU_KVCACHE_SPACE=1) and
    under a cap of 2 GiB. Hand computation: stories260K-hd32 stores 2 × 5 layers × 4 KV heads × 32 float32 numbers
    per token, in blocks of 128 tokens on this build."""
    vllm, _ = engines
    per_token, block = 2 * 5 * 4 * 32 * 4, 128
    fitted = ray.remote(num_cpus=0.5)(RolloutEngine).remote(str(POLICY_PATH), RolloutConfig(kv_cache_gib=2), 0, 256,
                                                             "float32", 100)
    try:
        whole, part = ray.get(vllm.kv_cache_tokens.remote()), ray.get(fitted.kv_cache_tokens.remote())
    finally:
        ray.kill(fitted)
    assert whole == (1 << 30) // (per_token * block) * block
    assert part == 101 * 256  # (100 + 1) sequences × 256 tokens: 132 MB, over the 64 MiB floor


def test_a_batch_past_the_schedulers_token_budget_samples_with_its_seeds(engines, prompts):
    """80 prompts of 61 tokens (4880 > vLLM's 4096 per scheduler step): chunked, a seeded request crashed the CPU
    engine ("CPU Generator does not use offset"). The same draw gives the same answers and leaves the training
    seed stream alone."""
    vllm, _ = engines
    long = [(prompts[i % len(prompts)] * 16)[:61] for i in range(80)]
    first = ray.get(vllm.generate.remote(long, None, 4, 0, 123))
    again = ray.get(vllm.generate.remote(long, None, 4, 0, 123))
    assert len(first) == 80 and all(len(s.response_ids) == len(s.response_logprobs) == 4 for s in first)
    assert [s.response_ids for s in first] == [s.response_ids for s in again]
    assert len({tuple(s.response_ids) for s in first}) > 1  # each row its own seed


def test_rollouts_are_not_detokenized(engines):
    """Rollouts return token ids and their log-probs, never text: vLLM's detokenizing of each sampled token (and of
    each log-prob entry's token) was 13% of a rollout at the 0.4M shape (0.263 vs 0.229 s for 32 × 24 tokens,
    the same tokens and log-probs either way)."""
    vllm, _ = engines
    assert ray.get(vllm.sampling_params.remote()).detokenize is False
    assert ray.get(vllm.sampling_params.remote(0.0, 4, 7)).detokenize is False


def test_the_engine_samples_on_the_threads_its_plan_gives_despite_vllms_no_op_setter(engines, prompts):
    """vLLM's CPU worker replaces torch.set_num_threads with a no-op in the engine's process; the plan still
    takes effect (ThreadPlan sets threads underneath it), so the engine samples on the node's cores."""
    vllm, _ = engines
    ray.get(vllm.greedy.remote(prompts, 2))

    def probe(engine):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)  # vLLM's replacement: changes nothing
        return before, torch.get_num_threads()

    assert ray.get(vllm.__ray_call__.remote(probe)) == (node_cores(), node_cores())


def test_the_tiny_fp32_policy_keeps_plain_weights_that_a_sync_updates_in_place(engines):
    """ppo.rollout.cpu_weights=auto on the tiny fp32 policy: every layer multiplies by torch over the weight it
    kept (no oneDNN handler), so syncs load in place (the sync test above checks what they load); vLLM's switch is
    off again once the engine has loaded, and a quantized model would not be loaded in place."""
    vllm, _ = engines

    def probe(engine):
        from vllm.model_executor.layers.linear import LinearBase

        from actors.rollout.vllm_weights import in_place_eligible, is_plain

        def eligible(worker, quantization):
            return in_place_eligible(worker.model_runner.get_model(), quantization)

        return (engine.weight_layout(), engine.llm.collective_rpc(is_plain)[0],
                "_cpu_skip_gemm_dispatch" in LinearBase.__dict__, engine.llm.collective_rpc(eligible, args=(None,))[0],
                engine.llm.collective_rpc(eligible, args=("fp8",))[0])

    assert ray.get(vllm.__ray_call__.remote(probe)) == ("plain", True, False, None, "the model is quantized (fp8)")


def test_a_sync_through_the_store_leaves_the_engines_parameters_in_it_where_its_layout_fits(engines, prompts):
    """rollout.zero_copy_sync (on by default; the tiny policy's engine keeps plain weights): after a sync through
    Ray's object store the engine's parameters are views of the synced buckets, and it samples as the Hugging Face
    engine does with the same weights. Weights not laid out as vLLM stacks them (here packed in reverse, so v comes
    before k and q, and up before gate) are copied instead, the rest still viewed, and the next sync that fits is
    viewed whole again."""
    from transformers import AutoModelForCausalLM

    from actors.weights import BucketPacker, hf_tied_aliases

    vllm, hf = engines
    model = AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32)
    generator = torch.Generator().manual_seed(3)
    prompt, response = prompts[1], prompts[3][1:9]

    def sync(order) -> tuple[tuple[int, int], torch.Tensor]:
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
        named = order([(name, param.detach()) for name, param in model.named_parameters()])
        refs = [ray.put(bucket) for bucket in BucketPacker(2**26).pack(iter(named), hf_tied_aliases(model), True)]
        ray.get(vllm.load_weights.remote(*refs))
        hf.load_weights(list(hf_named_weights(model, stage=0)))
        ours = torch.tensor(ray.get(vllm.sequence_logprobs.remote(prompt, response)))
        assert torch.allclose(ours, torch.tensor(hf.sequence_logprobs(prompt, response)), atol=1e-4)
        return ray.get(vllm.zero_copy.remote()), ours

    (viewed, parameters), first = sync(list)
    assert viewed == parameters > 0
    (partly, _), second = sync(lambda named: named[::-1])
    fused = 2 * 5  # the tiny policy's 5 layers: qkv_proj and gate_up_proj in each
    assert partly == parameters - fused and (second - first).abs().max() > 1e-3  # the new weights, in part copied
    assert sync(list)[0] == (parameters, parameters)
