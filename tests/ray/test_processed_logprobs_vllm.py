"""The trainer's processed log-probs (actors/algo/sampling.py) against a real vLLM engine (CPU build), tiny policy.

vLLM samples with the rollout settings (temperature 0.7, top_p 0.9, repetition penalty 1.2) and reports
`logprobs_mode="processed_logprobs"`. Two checks: on vLLM's own logits (a second engine in `raw_logits` mode,
same seeds, so the same tokens) our processing reproduces vLLM's log-probs bit for bit; on a teacher-forced
Hugging Face forward it matches within the two engines' float32 forward noise. A third test measures what the
processing fixes: the temperature-only log-probs the trainer used before (the figure quoted in the README).

No Ray is needed. vLLM runs in a child process (this module run as a script) because an in-process CPU engine
pins the process's threads and replaces torch.set_num_threads for good (vllm/v1/worker/cpu_worker.py), which
would leak into every later test of the session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from actors.algo.sampling import processed_logprobs
from tests.conftest import POLICY_PATH

# The default tier checks the same match through the real roles (tests/ray/test_ppo_roles.py); this one, with a
# second vLLM engine and whole logit rows, pins down vLLM's own arithmetic.
pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SETTINGS = dict(temperature=0.7, top_p=0.9, repetition_penalty=1.2)
NEW_TOKENS = 32
OPENINGS = ["Once upon a time", "One day", "The little", "Lily and Tom", "A big red ball", "The cat", "In the park",
            "Mom said"]
ENDINGS = ["", " there was a girl", " a dog", " the sun", " Ben", " the bird", " a tree", " they"]
TEXTS = [opening + ending for opening in OPENINGS for ending in ENDINGS]  # 64 prompts
EXTRA = 8  # prompts also sampled with top_k 20 and greedily
FULL_LOGITS = 8  # sampled requests whose every raw logit the second engine returns (with the extra ones)
# Largest |HF − vLLM| over the 2,560 tokens here: 1.1e-5. The two engines' raw log-probs differ by up to
# 7.7e-6 on these sequences (float32 forwards summed in different orders); dividing by τ = 0.7 scales that.
ATOL = 2.5e-5
# Moving the top-p cut by this much mass must not change a token's log-prob, or the token sits on the nucleus
# edge where 1e-6 of logit noise decides (about 0.3 % of tokens): such tokens are checked at p ± NUDGE instead.
NUDGE = 1e-4


def requests(n_prompts: int) -> list[dict]:
    """The sampling parameters of every request, in the order both engines receive them."""
    sampled = [dict(SETTINGS, seed=i) for i in range(n_prompts)]
    top_k = [dict(SETTINGS, top_k=20, seed=1000 + i) for i in range(EXTRA)]
    greedy = [dict(SETTINGS, temperature=0.0) for _ in range(EXTRA)]
    return sampled + top_k + greedy


def request_prompts(prompts: list[list[int]]) -> list[list[int]]:
    """The prompt of every request, aligned with requests()."""
    return prompts + prompts[:EXTRA] + prompts[:EXTRA]


def sample_with_vllm(model_path: str, prompts_path: str, out_path: str) -> None:
    """Child process: sample with a processed_logprobs engine, then replay the same requests on a raw_logits
    engine that returns the whole logit row for some of them. Greedy requests go in their own call, as
    RolloutEngine.greedy sends them (vLLM's all-greedy path)."""
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams, TokensPrompt

    prompts = json.loads(Path(prompts_path).read_text())
    inputs = [TokensPrompt(prompt_token_ids=p) for p in request_prompts(prompts)]
    specs = requests(len(prompts))
    random_calls = len(prompts) + EXTRA

    def run(mode: str, logprobs_for) -> tuple[list, int]:
        llm = LLM(model=model_path, dtype="float32", seed=0, max_model_len=256, enforce_eager=True,
                  enable_prefix_caching=False, logprobs_mode=mode, max_logprobs=-1)
        # Flat log-prob lists and no detokenising: otherwise a whole vocabulary row per token becomes 512
        # Logprob objects with decoded text, 18 s of this test.
        params = [SamplingParams(**spec, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=logprobs_for(i),
                                 detokenize=False, flat_logprobs=True) for i, spec in enumerate(specs)]
        outs = (llm.generate(inputs[:random_calls], params[:random_calls], use_tqdm=False)
                + llm.generate(inputs[random_calls:], params[random_calls:], use_tqdm=False))
        vocab = llm.llm_engine.model_config.get_vocab_size()
        del llm  # one engine's KV cache at a time
        return [out.outputs[0] for out in outs], vocab

    def rows(flat, vocab: int) -> torch.Tensor:
        """[positions, vocab] from FlatLogprobs (in raw_logits mode its "logprobs" are the raw logits); each
        position lists the sampled token first, then the top ones. A missing entry stays NaN and fails the test."""
        out = torch.full((len(flat.start_indices), vocab), float("nan"))
        for pos, (start, end) in enumerate(zip(flat.start_indices, flat.end_indices)):
            out[pos, flat.token_ids[start:end]] = torch.tensor(flat.logprobs[start:end])
        return out

    def sampled(completion) -> torch.Tensor:
        """[positions]: the sampled token's log-prob, which the sampler always lists first."""
        flat = completion.logprobs
        assert [flat.token_ids[start] for start in flat.start_indices] == list(completion.token_ids)
        return torch.tensor([flat.logprobs[start] for start in flat.start_indices])

    processed, _ = run("processed_logprobs", lambda i: 0)
    full = [i for i in range(len(specs)) if i < FULL_LOGITS or i >= len(prompts)]
    raw, vocab = run("raw_logits", lambda i: -1 if i in full else 0)
    torch.save({
        "response_ids": [list(c.token_ids) for c in processed],
        "logprobs": [sampled(c) for c in processed],
        "raw_response_ids": [list(c.token_ids) for c in raw],
        "raw_logits": {i: rows(raw[i].logprobs, vocab) for i in full},  # {request: [positions, V]}
    }, out_path)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(POLICY_PATH))
    return [tokenizer(text)["input_ids"] for text in TEXTS]


@pytest.fixture(scope="module")
def vllm_run(prompts, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("vllm")
    (folder / "prompts.json").write_text(json.dumps(prompts))
    out = folder / "out.pt"
    result = subprocess.run(
        [sys.executable, "-m", "tests.ray.test_processed_logprobs_vllm", str(POLICY_PATH), str(folder / "prompts.json"),
         str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(POLICY_PATH), dtype=torch.float32).eval()


def response_logprobs(logits: torch.Tensor, prompt: list[int], response: list[int], spec: dict, **overrides):
    """Our processed log-probs of `response` given logits [1, len(prompt + response) - 1, V]."""
    ids = torch.tensor([prompt + response])
    action_mask = torch.zeros(1, ids.shape[1] - 1, dtype=torch.bool)
    action_mask[0, len(prompt) - 1:] = True
    settings = {k: spec[k] for k in ("temperature", "top_p", "repetition_penalty")} | {"top_k": spec.get("top_k", -1)}
    return processed_logprobs(logits, ids, **(settings | overrides), action_mask=action_mask)[0, len(prompt) - 1:]


def test_same_seeds_sample_the_same_tokens_in_both_logprob_modes(vllm_run):
    assert vllm_run["raw_response_ids"] == vllm_run["response_ids"]
    assert all(len(ids) == NEW_TOKENS for ids in vllm_run["response_ids"])


def test_vllms_own_logits_give_its_processed_logprobs_bit_for_bit(vllm_run, prompts):
    specs = requests(len(prompts))
    for i, row_logits in vllm_run["raw_logits"].items():
        prompt, response = request_prompts(prompts)[i], vllm_run["response_ids"][i]
        logits = torch.zeros(1, len(prompt) + len(response) - 1, row_logits.shape[-1])
        logits[0, len(prompt) - 1:] = row_logits  # prompt positions are masked out; their logits are unused
        ours = response_logprobs(logits, prompt, response, specs[i])
        assert torch.equal(ours, vllm_run["logprobs"][i]), f"request {i} ({specs[i]})"


@pytest.fixture(scope="module")
def teacher_forced(vllm_run, prompts, model) -> list[dict]:
    """Per request: vLLM's processed log-probs, ours from a Hugging Face forward (at top_p and top_p ± NUDGE),
    and the temperature-only log-probs the trainer computed before."""
    rows = []
    with torch.no_grad():
        for spec, prompt, response, theirs in zip(requests(len(prompts)), request_prompts(prompts),
                                                  vllm_run["response_ids"], vllm_run["logprobs"]):
            ids = torch.tensor([prompt + response])
            logits = model(input_ids=ids).logits[:, :-1]
            nudged = [response_logprobs(logits, prompt, response, spec, top_p=min(spec["top_p"] + d, 1.0))
                      for d in (-NUDGE, NUDGE)]
            plain = (logits[0, len(prompt) - 1:] / spec["temperature"]).log_softmax(-1)
            rows.append({"vllm": theirs, "ours": response_logprobs(logits, prompt, response, spec),
                         "nudged": nudged, "plain": plain.gather(-1, torch.tensor(response)[:, None]).squeeze(-1),
                         "spec": spec})
    return rows


def test_trainer_logprobs_match_vllm_processed_logprobs(teacher_forced):
    vllm = torch.cat([row["vllm"] for row in teacher_forced])
    ours = torch.cat([row["ours"] for row in teacher_forced])
    low, high = (torch.cat([row["nudged"][k] for row in teacher_forced]) for k in (0, 1))
    on_edge = (low != ours) | (high != ours)
    assert on_edge.float().mean() < 0.02, f"{int(on_edge.sum())} of {len(ours)} tokens sit on the nucleus edge"
    error = (ours - vllm).abs()
    assert error[~on_edge].max() <= ATOL, f"max |ours − vLLM| = {error[~on_edge].max():.3g} off the edge"
    explained = torch.stack([error, (low - vllm).abs(), (high - vllm).abs()]).min(dim=0).values
    assert explained[on_edge].le(ATOL).all(), "an edge token matches vLLM at none of p, p ± NUDGE"


def test_temperature_only_logprobs_miss_the_processed_distribution(teacher_forced):
    """The figure for the README: PPO's ratio at the first step when the trainer ignores top-p and the penalty.
    Measured here: mean k3 KL(vLLM ‖ trainer) 0.167 per token, 15.1 % of tokens with ratio outside [0.5, 2]."""
    rows = teacher_forced[:len(TEXTS)]  # the requests with exactly the rollout settings
    figures = {}
    for name in ("plain", "ours"):
        log_ratio = torch.cat([row[name] - row["vllm"] for row in rows])  # log trainer − log sampler
        figures[name] = ((torch.expm1(log_ratio) - log_ratio).mean().item(),
                         ((log_ratio.exp() < 0.5) | (log_ratio.exp() > 2.0)).float().mean().item())
    print(f"\n{len(TEXTS)} prompts × {NEW_TOKENS} tokens, mean k3 KL and share of ratios outside [0.5, 2]: "
          f"temperature only {figures['plain']}, processed {figures['ours']}")
    assert figures["plain"][0] > 0.05 and figures["plain"][1] > 0.05
    assert figures["ours"][0] < 1e-9 and figures["ours"][1] == 0.0


if __name__ == "__main__":
    sample_with_vllm(*sys.argv[1:4])
