"""Every model family in the real vLLM engine (CPU build): the tiny model of each (jobs/tiny_models.py) loads, and
after PPO's weight sync of changed weights (actors/weights.py's names, fused projections and tied embeddings
included), copied in place into the plain weights the tiny models keep, the engine's log-probs of a fixed response equal the policy's to 1e-4. Slow: one engine start per
family; the default tier checks the sync on the Llama policy (tests/ray/test_ppo_roles.py)."""

from __future__ import annotations

import pytest
import ray
import torch

from actors.rollout.vllm_engine import RolloutEngine
from actors.weights import hf_named_weights
from common.config import RolloutConfig
from jobs.tiny_models import FAMILIES, build

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: build(name, root / name) for name in FAMILIES}


def teacher_forced(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    return logprobs.gather(-1, ids[0, len(prompt):, None]).squeeze(-1)


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
    finally:
        ray.kill(engine)
