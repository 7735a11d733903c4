"""Hardware profiles (SPEC §6) and the planner: the memory model against numbers worked out by hand for 7B, 13B and
70B Llama-2 shapes, refusals with their reason, role placement, and when to skip RLHF (SPEC §4)."""

from __future__ import annotations

from typing import get_args

import pytest

from common.config import TaskType
from common.errors import ConfigError
from jobs import cli, plan
from jobs.planning import profiles
from jobs.planning.memory import GIB, KNOWN_SHAPES, Memory, lora_trainable, shape_from_checkpoint
from jobs.planning.profiles import load_profile, make_plan
from tests.conftest import POLICY_PATH

# LoRA r=64 on q, k, v, o: r·(in + out) per projection per layer.
LORA_7B = 32 * 64 * (4 * (4096 + 4096))  # 67,108,864
LORA_70B = 80 * 64 * ((8192 + 8192) + 2 * (8192 + 8 * 128) + (8192 + 8192))  # GQA: k, v project to 8 heads of 128


def role(plan_, stage: str, name: str):
    return next(r for r in plan_.roles if r.stage == stage and r.role == name)


def terms(memory: Memory) -> tuple[float, ...]:
    return tuple(getattr(memory, term) for term in Memory.TERMS)


def test_lora_counts_match_the_shapes():
    assert lora_trainable(KNOWN_SHAPES[7.0], 64, ["q_proj", "k_proj", "v_proj", "o_proj"]) == LORA_7B
    assert lora_trainable(KNOWN_SHAPES[70.0], 64, ["q_proj", "k_proj", "v_proj", "o_proj"]) == LORA_70B
    assert LORA_70B == 262_144_000
    # The tiny checkpoint's own shape: tests/integration/test_sft_job.py counts 40,960 LoRA r=8 parameters in the
    # real model, and 444,352 in total.
    tiny = shape_from_checkpoint(str(POLICY_PATH))
    assert tiny.params == 444_352 and lora_trainable(tiny, 8, ["q_proj", "k_proj", "v_proj", "o_proj"]) == 40_960
    with pytest.raises(ConfigError, match=r"lora.target_modules \['query'\] have no known shape"):
        lora_trainable(tiny, 8, ["query"])


def test_a_gpt2_style_checkpoint_gives_its_shape_and_a_config_without_one_is_refused(tmp_path):
    """The planner reads a checkpoint's shape through the same reader as the rollout engine's KV-cache sizing
    (common/model_dir.text_shape): GPT-2 names too, the MLP width 4 × n_embd when n_inner is null."""
    import json

    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=3, n_head=4, n_embd=64, vocab_size=120, n_positions=32)).save_pretrained(
        tmp_path / "gpt2")
    shape = shape_from_checkpoint(str(tmp_path / "gpt2"))
    # wte 120×64 + wpe 32×64 + 3 blocks × (2 norms 2×64, attention 64×192+192 and 64×64+64, MLP 64×256+256 and
    # 256×64+64) + final norm 2×64; the tied output head is not counted twice.
    block = 2 * 128 + (64 * 192 + 192) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    assert shape.params == 120 * 64 + 32 * 64 + 3 * block + 128
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.vocab,
            shape.intermediate) == (3, 64, 4, 4, 16, 120, 256)
    config = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    del config["n_layer"]
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="does not give the model's layers, heads, width and vocabulary"):
        shape_from_checkpoint(str(tmp_path / "gpt2"))


def test_7b_int8_lora_dpo_on_4xa100_by_hand():
    result = make_plan(load_profile("4xa100"), "7B")
    policy = role(result, "dpo", "policy")
    assert (policy.ranks, policy.gpus_per_rank) == (4, 1.0)
    assert terms(policy.memory) == (
        7e9 * 1 + LORA_7B * 2,  # int8 base + bf16 adapters; ZeRO-2 does not split parameters
        LORA_7B * 2 / 4,  # bf16 gradients of the adapters, split over 4 ranks
        LORA_7B * 12 / 4,  # fp32 master + 2 moments, split over 4 ranks
        (2 * 2) * 2048 * (4096 * 32 * 34 + 32000 * 4),  # 2 pairs = 4 sequences of 2048 tokens, + fp32 logits
        0.0)
    assert policy.memory.on_device == 44_924_896_768  # 41.8 GiB of the 72 GiB usable on an A100-80GB
    assert result.fits and result.stages == ["curate", "sft", "dpo"] and role(result, "dpo", "reference").memory is None


def test_ppo_policy_and_reference_hold_the_logits_of_the_response_tokens_alone_by_hand():
    """With model.fused_loss (the default) PPO's policy and reference project the response tokens alone
    (actors/scored.py): their logits are b·n·V·4 for n = 512 new tokens of s = 1024, not b·s·V·4; under ZeRO-3 (the
    multi-node recipe's stage) the policy's head is partitioned and computes them all."""
    fused, whole = (make_plan(load_profile("multi-node", ["deepspeed.stage=2", f"model.fused_loss={flag}"]),
                              "7B") for flag in ("true", "false"))
    zero3 = make_plan(load_profile("multi-node"), "7B")
    layers = 4096 * (2 * 32 + 34)  # bf16, gradient checkpointing: b·s·h·(2L + 34)
    # 16 sequences a mini-batch over 8 policy ranks: 2 per rank; the reference scores 16 sequences at a time.
    assert role(fused, "ppo", "policy").memory.activations == 2 * 1024 * layers + 2 * 512 * 32000 * 4
    assert role(whole, "ppo", "policy").memory.activations == 2 * 1024 * layers + 2 * 1024 * 32000 * 4
    assert role(zero3, "ppo", "policy").memory.activations == 2 * 1024 * layers + 2 * 1024 * 32000 * 4
    for plan_, tokens in ((fused, 512), (whole, 1024), (zero3, 512)):  # the reference is no ZeRO rank
        reference = role(plan_, "ppo", "reference").memory
        assert reference.activations == 16 * 1024 * 4096 * 34 + 16 * tokens * 32000 * 4


def test_a_soft_capped_checkpoint_keeps_every_positions_logits_in_the_plan(tmp_path):
    """Gemma 2 caps its logits, so its head runs everywhere (modeling.fused_loss_head) and the plan counts it so."""
    from jobs.tiny_models import build

    gemma = shape_from_checkpoint(str(build("gemma2", tmp_path / "gemma2")))
    llama = shape_from_checkpoint(str(POLICY_PATH))
    assert gemma.capped_logits and not gemma.response_logits_only(fused_loss=True)
    assert not llama.capped_logits and llama.response_logits_only(fused_loss=True)
    assert not llama.response_logits_only(fused_loss=False)


def test_13b_full_zero3_sft_on_multi_node_by_hand():
    result = make_plan(load_profile("multi-node"), "13B")
    sft = role(result, "sft", "policy")
    assert terms(sft.memory) == (13e9 * 2 / 16, 13e9 * 2 / 16, 13e9 * 12 / 16,
                                 4 * 2048 * (5120 * (2 * 40 + 34) + 32000 * 4),  # gradient checkpointing
                                 0.0)
    # The 13B rollout engine takes gpu_memory_utilization 0.9 of its A100-80GB, 72 GiB: bf16 weights (26e9 bytes)
    # and a KV cache of what is left. 64 sequences × 1024 tokens × 2 (K, V) × 40 layers × 40 heads × head dim 128
    # × 2 bytes would need 50 GiB; the room holds 61 at once, so vLLM runs them in two waves: slower, not a failure.
    rollout = role(result, "ppo", "rollout")
    assert rollout.memory.on_device == 0.9 * 80 * GIB and rollout.memory.kv_cache == 0.9 * 80 * GIB - 26e9
    assert int(rollout.memory.kv_cache // (1024 * 2 * 40 * 40 * 128 * 2)) == 61
    assert "64 sequences each, KV room for 61 at once" in rollout.note
    assert result.fits
    # An engine whose share of the card cannot hold the 13B weights and one sequence cannot start at all.
    starved = make_plan(load_profile("multi-node", ["ppo.rollout.gpu_memory_utilization=0.3"]), "13B")
    assert starved.problems == ["stage ppo, role rollout: vLLM takes ppo.rollout.gpu_memory_utilization=0.3 of the "
                                "A100-80GB (24.0 GiB), which does not hold the weights (24.2 GiB) and one sequence's "
                                "KV cache: raise it (the roles sharing its GPU get the rest)"]
    # On half a GPU, 0.9 of the card is more than the half the plan gives the engine.
    shared = make_plan(load_profile("multi-node", ["ppo.gpus_per_actor=0.5", "ppo.colocate=true"]), "7B")
    assert "stage ppo, role rollout: needs 72.0 GiB per rank (kv_cache 59.0 GiB) but 0.5 × A100-80GB offers 36.0 GiB " \
           "(90% usable); lower ppo.rollout.gpu_memory_utilization to the engine's share of its GPU, or give it more " \
           "of one (ppo.gpus_per_actor)" in shared.problems


def test_70b_by_hand_across_profiles():
    on_4090 = make_plan(load_profile("1x4090"), "70B")
    assert terms(role(on_4090, "sft", "policy").memory) == (
        70e9 * 0.5 + LORA_70B * 2,  # NF4 base + bf16 adapters: 33.1 GiB
        LORA_70B * 2, LORA_70B * 12,  # ZeRO-0 on one GPU splits nothing
        1 * 1024 * (8192 * (2 * 80 + 34) + 32000 * 4),  # batch 1, checkpointed
        0.0)
    assert on_4090.problems == ["stage sft, role policy: needs 38.1 GiB per rank (parameters 33.1 GiB) but 1 × "
                                "RTX4090-24GB offers 21.6 GiB (90% usable); the 4-bit base alone is too large: split "
                                "it with deepspeed.stage=3 over more GPUs, or take a smaller model"]

    on_2xa100 = make_plan(load_profile("2xa100"), "70B")
    assert role(on_2xa100, "sft", "policy").memory.activations == 4 * 2048 * (8192 * 80 * 34 + 32000 * 4)
    assert "(activations 171.0 GiB)" in on_2xa100.problems[0] and "gradient_checkpointing" in on_2xa100.problems[0]
    checkpointed = make_plan(load_profile("2xa100", ["model.gradient_checkpointing=true"]), "70B")
    assert checkpointed.fits
    assert role(checkpointed, "dpo", "policy").memory.on_device == (
        70e9 * 0.5 + LORA_70B * 2 + LORA_70B * 2 / 2 + LORA_70B * 12 / 2
        + 4 * 2048 * (8192 * (2 * 80 + 34) + 32000 * 4))

    # int8 on 4 × A100: even checkpointed, 65.7 GiB of weights per rank leave no room; ZeRO-3 splits them.
    int8 = make_plan(load_profile("4xa100", ["model.gradient_checkpointing=true"]), "70B")
    assert "role policy: needs 79.6 GiB per rank (parameters 65.7 GiB)" in int8.problems[0]
    zero3 = make_plan(load_profile("4xa100", ["model.gradient_checkpointing=true", "deepspeed.stage=3"]), "70B")
    assert zero3.fits and role(zero3, "sft", "policy").memory.parameters == (70e9 + LORA_70B * 2) / 4


def test_offload_moves_optimizer_states_to_host_memory():
    result = make_plan(load_profile("multi-node", ["deepspeed.offload_optimizer=true"]), "7B")
    sft = role(result, "sft", "policy")
    assert sft.memory.optimizer == 0.0 and sft.memory.offloaded == 7e9 * 12 / 16
    assert result.fits  # 84 GB over both hosts' 2 × 1024 GiB
    tight = make_plan(load_profile("multi-node", ["deepspeed.offload_optimizer=true", "profile.host_memory_gib=32"]),
                      "7B")
    assert tight.problems[0].startswith("stage sft: needs 78.2 GiB of host memory over all ranks")


def test_the_value_model_is_sized_as_it_trains_in_full_and_each_refusal_names_what_would_help():
    """A PPO value model trains every parameter of an unquantized backbone (actors/value.py), whatever the policy's
    LoRA and int8: sized like the policy it 'fitted' at 20 GiB. 7B bf16: weights 2N, gradients 2N, AdamW 12N."""
    rlhf = ["pipeline.stages=[curate,sft,reward_model,ppo]", "ppo.gpus_per_actor=1", "ppo.reference=adapter_disabled",
            "reward_model.lora=true"]
    result = make_plan(load_profile("4xa100", rlhf), "7B")
    value = role(result, "ppo", "value").memory
    assert (value.parameters, value.gradients, value.optimizer) == (7e9 * 2, 7e9 * 2, 7e9 * 12)
    [problem] = [p for p in result.problems if "role value" in p]
    assert "lora.enabled" not in problem and "(ppo.advantage_estimator=grpo)" in problem
    # The reward model's stage reads reward_model.lora; ZeRO-3 is not offered again once set.
    rm = make_plan(load_profile("4xa100", ["reward_model.use_gpu=true", "reward_model.num_workers=1",
                                           "deepspeed.stage=3", "model.quantization=none",
                                           "pipeline.stages=[curate,sft,reward_model,ppo]"]), "70B")
    [problem] = [p for p in rm.problems if "role reward" in p]
    assert "reward_model.lora=true" in problem and "deepspeed.stage" not in problem, problem
    # Host memory taken by offloaded optimizer states is named as such.
    tight = ["deepspeed.offload_optimizer=true", "profile.host_memory_gib=32"]
    offloaded = make_plan(load_profile("multi-node", tight), "7B")
    assert "(offloaded 78.2 GiB)" in offloaded.problems[0] and "offload less" in offloaded.problems[0]


def test_a_role_layout_larger_than_the_cluster_is_refused():
    result = make_plan(load_profile("multi-node", ["ppo.policy_workers=16"]), "7B")
    assert "stage ppo asks for 24 GPUs but profile multi-node has 16" in result.problems


def test_quantised_weights_need_adapters_and_a_gpu():
    assert make_plan(load_profile("4xa100", ["lora.enabled=false", "dpo.reference=copy"]), "7B").problems[0] == (
        "model.quantization=int8 weights cannot be trained directly; set lora.enabled=true")
    assert "needs CUDA GPUs; profile cpu has none" in make_plan(
        load_profile("cpu", ["model.quantization=int8", "lora.enabled=true"])).problems[0]


def test_the_cpu_profile_plans_the_tiny_checkpoint_and_fits():
    result = make_plan(load_profile("cpu"))
    assert result.shape.params == 444_352 and result.fits
    assert [r.role for r in result.roles if r.stage == "ppo"] == ["rollout", "policy", "value", "reference", "reward"]
    assert not make_plan(load_profile("cpu"), "7B").fits  # 7B full fp32 training on a 24 GiB host


# ---- when to skip RLHF (SPEC §4) -------------------------------------------------------------------------
def test_every_task_type_is_either_formatted_output_or_open_ended():
    assert sorted(profiles.FORMATTED_OUTPUT_TASKS + profiles.OPEN_ENDED_TASKS) == sorted(get_args(TaskType))
    assert profiles.FORMATTED_OUTPUT_TASKS == ("code", "extraction")


@pytest.mark.parametrize("task", profiles.FORMATTED_OUTPUT_TASKS)
@pytest.mark.parametrize("profile", ["cpu", "2xa100", "4xa100", "multi-node"])
def test_formatted_output_tasks_get_sft_only(task, profile):
    result = make_plan(load_profile(profile), "7B" if profile != "cpu" else None, task)
    assert result.recommendation.method == "sft_only"
    assert "formatted-output task" in result.recommendation.reason
    assert not set(result.stages) & {"reward_model", "ppo", "dpo"} and "sft" in result.stages


@pytest.mark.parametrize("task", profiles.OPEN_ENDED_TASKS)
@pytest.mark.parametrize("profile, method", [("cpu", "ppo"), ("2xa100", "dpo"), ("4xa100", "dpo"),
                                             ("multi-node", "ppo")])
def test_open_ended_tasks_get_the_rlhf_the_profile_affords(task, profile, method):
    result = make_plan(load_profile(profile), "7B" if profile != "cpu" else None, task)
    assert result.recommendation.method == method and method in result.stages
    assert f"{task} is open-ended" in result.recommendation.reason


def test_a_profile_without_room_for_rlhf_says_so():
    rec = make_plan(load_profile("1x4090"), "7B", "creative").recommendation
    assert rec.method == "sft_only" and "has no room for it" in rec.reason


def test_task_type_comes_from_the_config_unless_given():
    assert make_plan(load_profile("4xa100", ["profile.task_type=extraction"]), "7B").recommendation.method == "sft_only"
    assert make_plan(load_profile("4xa100", ["profile.task_type=extraction"]), "7B", "safety").recommendation.method \
        == "dpo"


# ---- command line ----------------------------------------------------------------------------------------
def test_plan_prints_the_breakdown(capsys):
    assert cli.run_main("jobs.plan", plan.main, ["--profile", "4xa100", "--model-size", "7B"]) == 0
    out = capsys.readouterr().out
    assert "task      assistant → dpo" in out and "verdict   fits" in out
    assert "params    grads    optim    activ       KV" in out
    row = "dpo          policy        4  1 GPU       6.64     0.03     0.19    34.98     0.00    41.84   72.0 GiB"
    assert row in out


def test_a_plan_that_cannot_fit_exits_2_with_one_line(capsys):
    assert cli.run_main("jobs.plan", plan.main, ["--profile", "1x4090", "--model-size", "70B"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("jobs.plan: error: stage sft, role policy: needs 38.1 GiB per rank")
    assert len(captured.err.strip().splitlines()) == 1 and "sft          policy" in captured.out


def test_bad_sizes_and_profiles_are_user_errors(capsys):
    assert cli.run_main("jobs.plan", plan.main, ["--profile", "4xa100", "--model-size", "seven"]) == 2
    assert "model size 'seven' must look like 7B" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown profile '8xh100'"):
        load_profile("8xh100")


def test_the_plan_covers_the_stages_the_pipeline_runs():
    """One rule for both (profiles.stages_for_task): the plan followed profile.task_type alone and dropped a reward
    model listed without PPO or DPO, so it costed stages the pipeline skipped and skipped ones it ran."""
    from jobs.pipeline import stages_for_task

    for overrides in (["pipeline.task_type=code"], ["profile.task_type=code", "pipeline.force_rlhf=true"],
                      ["pipeline.stages=[curate,sft,reward_model]"], []):
        cfg = load_profile("4xa100", overrides)
        assert make_plan(cfg, "7B").stages == stages_for_task(cfg)[0], overrides
    assert make_plan(load_profile("4xa100", ["pipeline.task_type=code"]), "7B").stages == ["curate", "sft"]
    assert make_plan(load_profile("4xa100", ["pipeline.stages=[curate,sft,reward_model]"]), "7B").stages == \
        ["curate", "sft", "reward_model"]


def test_a_placement_the_nodes_cannot_hold_is_refused_though_the_gpus_add_up():
    """12 policy ranks in one STRICT_PACK group (the multi-node recipe's policy placement) on nodes of 8 GPUs: 16
    GPUs in all are enough, one node is not; the run's own check (cluster/placement.plan_problem) would fail."""
    grpo = ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=2", "ppo.mini_batch_size=12",
            "ppo.rollout_batch_size=96"]
    result = make_plan(load_profile("multi-node", ["ppo.policy_workers=12", *grpo]), "7B")
    assert result.problems == ["stage ppo: roles policy (STRICT_PACK) cannot be placed on this cluster's 2 node(s): "
                               "STRICT_PACK needs one node with GPU 12; the most one node has is GPU 8 (profile "
                               "multi-node: 2 × 8 GPUs; ppo.placement)"]
    assert make_plan(load_profile("multi-node", ["ppo.policy_workers=6", *grpo]), "7B").fits


def test_a_gpu_plan_of_the_demo_data_says_so():
    """The shipped GPU profiles point at the demo files: 4xa100 then costs SFT at $0 without saying why."""
    from jobs.planning.profiles import small_counted_data

    warning = small_counted_data(make_plan(load_profile("4xa100"), "7B"))
    assert warning.startswith("tokens counted from the recipe's data files (sft 2.83e+04, dpo 6.28e+04) are a demo's")
    sized = ["profile.sft_tokens=1e8", "profile.preference_tokens=2e7"]
    assert small_counted_data(make_plan(load_profile("4xa100", sized), "7B")) is None
    assert small_counted_data(make_plan(load_profile("cpu"), "7B")) is None  # a CPU plan is the demo's by design
