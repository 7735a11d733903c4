"""The planner's time and cost model (jobs/planning/costs.py): FLOP formulas by hand, data sizes, the seed's
reference points (7B full SFT on 4 × A100 for a week ≈ $2,000; LoRA on 2 cards ≈ half), and refusals."""

from __future__ import annotations

import json

import pytest

from common.errors import ConfigError
from jobs.planning import costs
from jobs.planning.profiles import format_plan, load_profile, make_plan

WEEK_S = 7 * 24 * 3600
FULL_7B_ON_4XA100 = ["lora.enabled=false", "model.quantization=none", "dpo.reference=copy", "pipeline.stages=[sft]"]


def test_flops_per_token_by_hand():
    assert costs.training_flops_per_token(7e9, lora=False, checkpointing=False) == 42e9  # 6N
    assert costs.training_flops_per_token(7e9, lora=True, checkpointing=False) == 28e9  # 4N: no weight gradients
    assert costs.training_flops_per_token(7e9, lora=True, checkpointing=True) == 42e9  # + the recomputed forward
    assert costs.forward_flops_per_token(7e9) == 14e9


def test_ppo_work_by_hand():
    cfg = load_profile("cpu", ["ppo.steps=10", "ppo.rollout_batch_size=8", "ppo.mini_batch_size=8",
                               "ppo.rollout.max_prompt_tokens=20", "ppo.rollout.max_new_tokens=12", "ppo.ppo_epochs=2",
                               "ppo.reward.rm_source=keyword"])
    tokens, train, decode = costs.ppo_work(cfg, 1e6)
    n = 10 * 8 * (20 + 12)  # steps × sequences × (prompt + response)
    # Forwards: old log-probs, reference, value (gae) = 3 × 2N; training: policy and value, 2 epochs × 6N each.
    assert tokens == n and decode == n * 2e6 and train == n * (3 * 2e6 + 2 * 2 * 6e6)


def test_data_size_counts_chats_and_pairs(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "user", "content": "a" * 40}, {"role": "assistant", "content": "b" * 40}]},
            {"messages": [{"role": "user", "content": "q" * 20}], "chosen": "c" * 60, "rejected": "r" * 20}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    size = costs.data_size([str(path)], max_length=100)
    # The chat: 80 characters = 20 tokens; the pair: (20 + 60) / 4 + (20 + 20) / 4 = 20 + 10.
    assert (size.tokens, size.items) == (50.0, 2)
    assert costs.data_size([str(path)], max_length=12).tokens == 12 + 12 + 10  # each sequence capped


def test_max_steps_caps_the_tokens_a_stage_reads():
    cfg = load_profile("cpu")  # tiny-cpu: SFT 5 epochs, but max_steps 30 of 4 × 1 × 2 chats
    size = costs.data_size(cfg.data.train_files, cfg.data.max_length, cfg.data.max_records)
    sft = cfg.sft
    expected = min(5 * size.tokens, 30 * sft.micro_batch_size * sft.grad_accum * sft.num_workers * size.per_item())
    assert costs.plan_tokens(cfg, ["sft"])["sft"] == pytest.approx(expected, rel=1e-12)


def test_seed_reference_points_full_sft_a_week_on_4xa100_and_lora_on_2_cards():
    a100 = costs.DEVICES["A100-80GB"]
    # The data a week of full 7B SFT on 4 A100s gets through at the planner's MFU: 7.19e9 tokens.
    week_tokens = 4 * a100.peak_tflops * 1e12 * a100.mfu * WEEK_S / (6 * 7e9)
    full = make_plan(load_profile("4xa100", [*FULL_7B_ON_4XA100, f"profile.sft_tokens={week_tokens}",
                                             "sft.epochs=1"]), "7B")
    (sft,) = full.costs
    assert sft.gpus == 4 and sft.wall_hours == pytest.approx(168.0, rel=1e-9)
    assert sft.cost == pytest.approx(2000.0, rel=0.05)  # the seed: about $2,000 a week
    lora = make_plan(load_profile("2xa100", ["pipeline.stages=[sft]", f"profile.sft_tokens={week_tokens}",
                                             "sft.epochs=1"]), "7B")
    (adapters,) = lora.costs
    # The seed: "about $1,000, half". The FLOP model gives 2/3: LoRA skips only the weight-gradient third of the
    # backward, and 2 cards take 4/3 of a week for the same data. Band: half to three quarters.
    assert adapters.gpus == 2 and 0.5 <= adapters.cost / sft.cost <= 0.75
    assert adapters.cost / sft.cost == pytest.approx(2 / 3, rel=1e-9)
    text = format_plan(full)
    assert "cost $" in text and "$2.98 per GPU-hour" in text and text.count("\ntotal") == 1


def test_an_unknown_gpu_names_the_missing_setting_and_the_known_devices():
    with pytest.raises(ConfigError, match=r"profile.gpu 'B200' has no known peak_tflops, mfu, decode_mfu, "
                                          r"price_per_gpu_hour: set profile.peak_tflops \(known devices: A100-80GB"):
        make_plan(load_profile("4xa100", ["profile.gpu=B200"]), "7B")
    given = make_plan(load_profile("4xa100", ["profile.gpu=B200", "profile.peak_tflops=2250", "profile.mfu=0.3",
                                              "profile.decode_mfu=0.1", "profile.price_per_gpu_hour=6"]), "7B")
    assert all(c.cost == pytest.approx(c.gpu_hours * 6, rel=1e-12) for c in given.costs)
    cheaper = make_plan(load_profile("4xa100", ["profile.price_per_gpu_hour=1.5"]), "7B")
    assert all(c.cost == pytest.approx(c.gpu_hours * 1.5, rel=1e-12) for c in cheaper.costs)


def test_ppo_hours_add_up_phase_by_phase_on_each_roles_gpus():
    """multi-node, 7B full fine-tuning with checkpointing: 20 steps × 128 sequences × 1024 tokens. Each phase runs
    on the GPUs of the roles computing in it (A100: 312 TFLOP/s, MFU 0.4, decode 0.1); the 16 reserved GPUs are
    paid for the sum. All the work over all 16 GPUs gave 0.204 h, a third of this."""
    cfg = load_profile("multi-node")
    a100 = costs.DEVICES["A100-80GB"]
    train_rate, decode_rate = a100.peak_tflops * 1e12 * a100.mfu, a100.peak_tflops * 1e12 * a100.decode_mfu
    forward = 2 * 7e9 * 20 * 128 * 1024
    phases = costs.ppo_phase_seconds(cfg, 7e9, 16, a100)
    assert phases == pytest.approx({
        "rollout": forward / (2 * decode_rate),  # 2 engines
        "log-probs": forward / (1 * train_rate),  # the reference (1 GPU) beside the policy's old log-probs (8)
        "reward": forward / train_rate,
        "values": forward / (4 * train_rate),
        "train": max(4 * 8 / 2 * forward / (8 * train_rate),  # 4 epochs × 8N (6N + 2N recomputed) on 8 GPUs
                     4 * 8 / 2 * forward / (4 * train_rate))}, rel=1e-12)  # the value model on 4: the longer
    (ppo,) = [c for c in make_plan(cfg, "7B").costs if c.stage == "ppo"]
    assert ppo.wall_hours == pytest.approx(sum(phases.values()) / 3600, rel=1e-12)
    assert ppo.gpu_hours == pytest.approx(16 * ppo.wall_hours, rel=1e-12) and round(ppo.wall_hours, 2) == 0.67
