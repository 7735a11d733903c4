"""CUDA paths on a real GPU (opt in: `bash run.sh test -m gpu` on the lent GPU machine).

Each test skips with the reason when its real precondition is missing (no CUDA device, bitsandbytes not
installed), so on a CPU machine they report as skipped, never as passed. Single rank: one GPU means NCCL has
one rank; multi-rank equivalence is covered on CPU over gloo.
Run on the H100 (2026-11-25): see README "GPU results" for what passed there and the command.
"""

from __future__ import annotations

import os

import pytest
import torch

from common.config import load_config
from tests.conftest import POLICY_PATH, TINY_CPU
from tests.integration.test_ppo_job import LEARN, window_mean

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]


@pytest.fixture(scope="module")
def single_rank_group():
    """A one-rank NCCL process group, as DeepSpeed needs for its CUDA path."""
    import deepspeed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl", auto_mpi_discovery=False)
    yield
    torch.distributed.destroy_process_group()


def sft_batch(tokenizer, device):
    from actors.chat import encode_chat
    from actors.sft_data import collate

    chats = [[{"role": "user", "content": f"Count to {n}."}, {"role": "assistant", "content": "1 2 3 " * n}]
             for n in range(1, 9)]
    batch = collate([encode_chat(tokenizer, chat) for chat in chats], tokenizer.pad_token_id)
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_bf16_sft_steps_lower_the_loss(single_rank_group, stage):
    from actors import modeling, zero
    from actors.sft_worker import causal_lm_loss_sums

    cfg = load_config(TINY_CPU, [f"deepspeed.stage={stage}", "deepspeed.precision=bf16", "model.dtype=bfloat16"])
    tokenizer = modeling.load_tokenizer(POLICY_PATH)
    model = modeling.load_causal_lm(cfg.model).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine = zero.initialize(model, optimizer, None, zero.ds_config(cfg.deepspeed, 8, 1, 1.0, 1))
    batch = sft_batch(tokenizer, engine.device)
    losses = []
    for _ in range(10):
        total, tokens = causal_lm_loss_sums(engine, batch)
        loss = total / tokens
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def test_qlora_4bit_loads_trains_adapters_only():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'rayalign[gpu]')")
    from actors import modeling

    cfg = load_config(TINY_CPU, ["model.quantization=4bit", "lora.enabled=true", "lora.rank=8"])
    model = modeling.trainable_causal_lm(cfg.model, cfg.lora)
    trainable, total = modeling.count_parameters(model)
    assert 0 < trainable < total
    assert any("4bit" in type(m).__name__ for m in model.modules())
    tokenizer = modeling.load_tokenizer(POLICY_PATH)
    batch = sft_batch(tokenizer, "cuda")
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"])
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_int8_loading_matches_fp32_logits_roughly():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'rayalign[gpu]')")
    from actors import modeling

    int8 = modeling.load_causal_lm(load_config(TINY_CPU, ["model.quantization=int8"]).model)
    full = modeling.load_causal_lm(load_config(TINY_CPU).model).cuda()
    ids = torch.tensor([[1, 410, 471, 419, 285, 467, 270, 417, 13]], device="cuda")
    with torch.no_grad():
        a, b = int8(ids).logits.float().softmax(-1), full(ids).logits.float().softmax(-1)
    # int8 weights perturb logits; the next-token distributions must still agree closely.
    assert (a - b).abs().sum(-1).max() < 0.2


def test_fused_loss_matches_plain_logits_in_bf16_on_cuda():
    from actors import modeling
    from actors.sft_worker import causal_lm_loss_sums

    cfg = load_config(TINY_CPU, ["model.dtype=bfloat16"])
    model = modeling.load_causal_lm(cfg.model).cuda()
    batch = sft_batch(modeling.load_tokenizer(POLICY_PATH), "cuda")
    (fused, n), (plain, m) = causal_lm_loss_sums(model, batch, True), causal_lm_loss_sums(model, batch, False)
    assert n == m and float(fused) == pytest.approx(float(plain), rel=2e-2)


def test_reward_model_scores_on_the_gpu(tmp_path):
    from actors.reward import RewardModel
    from tests.reward_helpers import make_reward_dir

    model = RewardModel(make_reward_dir(tmp_path / "rm"), max_length=256)
    assert model.model.device.type == "cuda"
    prompts = [[{"role": "user", "content": "Tell me a story."}]] * 2
    scores = model.score(prompts, ["Once upon a time there was a happy cat.", "cat cat cat"])
    assert len(scores) == 2 and all(s == s for s in scores) and scores[0] != scores[1]


def test_ppo_learns_with_every_role_on_the_gpu(tmp_path):
    """Rollout, policy, value and reference actors share the one GPU (0.2 GPU each); reward goes up."""
    pytest.importorskip("ray", reason="ray is not installed here")
    import json

    from common.metrics import read_jsonl
    from jobs.ppo import run

    result = run(load_config(TINY_CPU, [f"run.output_root={tmp_path}", *LEARN, "ppo.gpus_per_actor=0.2",
                                        "ppo.kl.coef=0.05"]))
    rows = read_jsonl(result.output_dir / "metrics.jsonl")
    roster = json.loads((result.output_dir / "roles.json").read_text())
    on_gpu = {(a["role"], a["rank"]): a["cuda"] and bool(a["gpus"]) for a in roster["actors"]}
    assert on_gpu and all(on_gpu.values()), on_gpu
    before, after = window_mean(rows, "reward/rm_mean", True), window_mean(rows, "reward/rm_mean", False)
    assert after > before + 0.1, (before, after)
