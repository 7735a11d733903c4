"""Every model family in the real vLLM engine (CPU build): the tiny model of each (jobs/tiny_models.py) loads, and
after PPO's weight sync of changed weights (actors/weights.py's names, fused projections and tied embeddings
included), copied in place into the plain weights the tiny models keep, and then after two syncs through Ray's
object store, where the engine's parameters become the synced bytes where they can (rollout.zero_copy_sync), the
engine's log-probs of a fixed response equal the policy's to 1e-4. Slow: one engine start per family; the default
tier checks the sync on the Llama policy (tests/ray/test_ppo_roles.py)."""

from __future__ import annotations

import pytest
import ray
import torch

from actors.rollout.vllm_engine import RolloutEngine
from actors.weights import BucketPacker, borrowed_hf_weights, flatten_parameters, hf_named_weights, hf_tied_aliases
from common.config import RolloutConfig
from jobs.tiny_models import FAMILIES, build

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# (parameters an engine views after a store sync, its parameters), per family. Not viewed: an embedding and output
# head whose vocabulary vLLM pads to a multiple of 64 rows (left to its loader); Qwen2's q, k and v weights and
# biases, which lie apart (each bias follows its weight); and all of GPT-2, whose Conv1D weights vLLM transposes as
# it loads them: the first store sync finds the difference, and its engine keeps copying.
VIEWS = {"gemma2": (17, 18), "gpt2": (0, 0), "llama3": (13, 14), "mistral": (13, 15), "phi3": (13, 15),
         "qwen2": (11, 16), "qwen3": (17, 18)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(name, root / name) for name in FAMILIES}


def teacher_forced(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    return logprobs.gather(-1, ids[0, len(prompt):, None]).squeeze(-1)


def sync_through_the_store(model, engine) -> None:
    """Move every weight of `model` (a trained policy), then sync it into `engine` through Ray's object store, as PPO
    syncs a one-rank policy whose parameters lie in one buffer (flatten_parameters)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    buckets = BucketPacker(2**26).pack(borrowed_hf_weights(model, 0), hf_tied_aliases(model), True)
    ray.get(engine.load_weights.remote(*[ray.put(bucket) for bucket in buckets]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_engine_takes_the_policys_weights_for_every_family(ray_session, folders, family):
    from transformers import AutoModelForCausalLM

    engine = ray.remote(num_cpus=0.5)(RolloutEngine).remote(str(folders[family]), RolloutConfig(max_new_tokens=8),
                                                             0, 256)
    try:
        model = AutoModelForCausalLM.from_pretrained(folders[family], dtype=torch.float32).eval()
        prompt, response = [5, 6, 7, 8, 9, 10], [11, 12, 13, 14]
        loaded = torch.tensor(ray.get(engine.sequence_logprobs.remote(prompt, response)))
        assert torch.allclose(loaded, teacher_forced(model, prompt, response), atol=1e-4)
        with torch.no_grad():  # a trained policy: every weight moves
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        named = list(hf_named_weights(model, stage=0))
        # The tiny fp32 models keep plain weights (ppo.rollout.cpu_weights=auto): the sync copies into each layer.
        assert ray.get(engine.weight_layout.remote()) == "plain"
        assert ray.get(engine.load_weights.remote(named)) == len(named)
        synced = torch.tensor(ray.get(engine.sequence_logprobs.remote(prompt, response)))
        assert torch.allclose(synced, teacher_forced(model, prompt, response), atol=1e-4), (synced, family)
        assert (synced - loaded).abs().max() > 1e-2  # the sync changed what the engine computes
        # Through Ray's object store, as PPO syncs a plain-engine policy (its parameters in one buffer): the engine's
        # parameters become the synced bytes where they lie as vLLM stacks them (rollout.zero_copy_sync), proved
        # on the first such sync and trusted on the next.
        flatten_parameters(model)
        for _ in range(2):
            sync_through_the_store(model, engine)
            viewed, parameters = ray.get(engine.zero_copy.remote())
            assert (viewed, parameters) == VIEWS[family]
            viewing = torch.tensor(ray.get(engine.sequence_logprobs.remote(prompt, response)))
            assert torch.allclose(viewing, teacher_forced(model, prompt, response), atol=1e-4), (viewing, family)
    finally:
        ray.kill(engine)


# Packed weights (ppo.rollout.cpu_weights=packed): the first sync through Ray's object store loads with vLLM's
# reload and proves that rebuilding every packed layer from the synced weights gives the same layers
# (ppo.rollout.packed_sync=rebuild); the second is rebuilt. GPT-2's loader transposes its Conv1D weights, so its
# proof fails and its engine keeps vLLM's reload (packed-reload).
REBUILT = {family: "packed" for family in FAMILIES} | {"gpt2": "packed-reload"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_packed_engine_rebuilds_its_layers_from_the_synced_weights_for_every_family(ray_session, folders, family):
    from transformers import AutoModelForCausalLM

    config = RolloutConfig(max_new_tokens=8, cpu_weights="packed")
    engine = ray.remote(num_cpus=0.5)(RolloutEngine).remote(str(folders[family]), config, 0, 256)
    try:
        model = AutoModelForCausalLM.from_pretrained(folders[family], dtype=torch.float32).eval()
        prompt, response = [5, 6, 7, 8, 9, 10], [11, 12, 13, 14]
        loaded = torch.tensor(ray.get(engine.sequence_logprobs.remote(prompt, response)))
        flatten_parameters(model)
        for _ in range(2):
            sync_through_the_store(model, engine)
            synced = torch.tensor(ray.get(engine.sequence_logprobs.remote(prompt, response)))
            assert torch.allclose(synced, teacher_forced(model, prompt, response), atol=1e-4), (synced, family)
            assert (synced - loaded).abs().max() > 1e-2
            loaded = synced
        assert ray.get(engine.weight_layout.remote()) == REBUILT[family]
        rebuilt = REBUILT[family] == "packed"  # the second sync rebuilt, or both went through vLLM's reload
        assert ray.get(engine.packed_sync_counts.remote()) == {"rebuilt": int(rebuilt), "reloaded": 2 - rebuilt}
    finally:
        ray.kill(engine)
