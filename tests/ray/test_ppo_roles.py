"""PPO roles as real Ray actors: weight sync into a real vLLM engine, ZeRO rank/stage equivalence of one
policy update, NaN steps skipped, and a dead role named in the error."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from actors.algo import behaviour_mismatch
from actors.algo.sampling import fill_dropped
from actors.chat import encode_prompt
from actors.group import RoleGroup
from actors.modeling import load_tokenizer
from actors.policy import PolicyRole
from actors.ppo_roles import role_args
from actors.ppo_weight_sync import WeightSync
from actors.protocol import PolicyBatch, TokenBatch
from actors.rollout.engines import rollout_engine_class
from cluster.placement import RoleResources, release, reserve
from common.config import load_config
from common.errors import RoleFailure
from tests.conftest import POLICY_PATH, TINY_CPU

pytestmark = [pytest.mark.ray]


def ppo_config(*overrides: str):
    # The fixed batch below is written by hand, not sampled: many of its tokens lie outside the policy's top_p
    # nucleus, where the sampler's processed log-probs are −inf. These tests are about ranks, stages and syncs, so
    # they take the temperature-only log-probs; the processed ones are checked on sampled tokens.
    return load_config(TINY_CPU, ["ppo.mini_batch_size=8", "ppo.rollout_batch_size=8", "ppo.ppo_epochs=1",
                                  "ppo.lr=1e-2", "ppo.trainer_logprobs=temperature", *overrides])


def policy_group(cfg, ranks: int) -> RoleGroup:
    group, index = reserve([RoleResources("policy", ranks, cpus=0.5)])
    args = role_args(cfg, str(POLICY_PATH))["policy"]
    role = RoleGroup("policy", PolicyRole, ranks, group, index["policy"], 0.5, 0, args, distributed=True)
    role.placement = group
    role.call("setup")
    return role


def dispose(role: RoleGroup) -> None:
    role.kill()
    release(role.placement)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(POLICY_PATH)


@pytest.fixture(scope="module")
def batch(tokenizer) -> PolicyBatch:
    """Eight fixed prompt+response sequences with hand-set advantages (no sampling: exactly repeatable)."""
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": text}]) for text in
               ["Tell me a story.", "What is a cat?", "Say hello.", "Name a color.",
                "Count to three.", "Who is Lily?", "Where is the park?", "Why is the sky blue?"]]
    responses = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in
                 [" Once upon a time there was a dog.", " A cat is an animal.", " Hello!", " Red.",
                  " One, two, three.", " Lily is a girl who likes to play.", " The park is near the house.",
                  " Because the sun shines."]]
    tokens = TokenBatch.from_samples(prompts, responses, tokenizer.pad_token_id)
    advantages = torch.linspace(-1.0, 1.0, 8).unsqueeze(1).expand_as(tokens.action_mask) * tokens.action_mask
    zeros = torch.zeros_like(tokens.action_mask)
    return PolicyBatch(tokens.input_ids, tokens.attention_mask, tokens.action_mask, zeros, zeros, advantages, zeros)


def with_old_logprobs(group: RoleGroup, batch: PolicyBatch) -> PolicyBatch:
    tokens = TokenBatch(batch.input_ids, batch.attention_mask, batch.action_mask)
    # The ratio's old log-probs (ppo.trainer_logprobs), which are the behaviour's too: no rollout correction.
    parts = group.call("old_logprobs", per_rank=[(part,) for part in _shards(tokens, len(group))])
    old = torch.cat([ratio for ratio, _ in parts])
    return PolicyBatch(batch.input_ids, batch.attention_mask, batch.action_mask, old, old, batch.advantages, old)


def _shards(batch, n):
    from actors.protocol import shard

    return shard(batch, n)


def update(group: RoleGroup, batch: PolicyBatch) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """One PPO update on `batch` split over the group's ranks; returns (stats, log-probs before, after)."""
    batch = with_old_logprobs(group, batch)
    stats = group.call("train", per_rank=[(part, 0, 0.0) for part in _shards(batch, len(group))])[0]
    tokens = TokenBatch(batch.input_ids, batch.attention_mask, batch.action_mask)
    after = torch.cat(group.call("logprobs", per_rank=[(part,) for part in _shards(tokens, len(group))]))
    return stats, batch.old_logprobs, after


# Adam's first step is nearly sign(gradient) × lr, so float32 noise on near-zero gradient entries can flip a
# sign and move that weight by 2 × lr: equivalence runs use a small lr to keep that below the tolerance.
EQUIVALENCE_LR = "ppo.lr=1e-4"


@pytest.fixture(scope="module")
def one_rank_update(ray_session, batch):
    group = policy_group(ppo_config("deepspeed.stage=2", EQUIVALENCE_LR), 1)
    assert group.call_rank0("engine_kind") == "plain"
    result = update(group, batch)
    dispose(group)
    return result


def test_two_ranks_give_the_same_update_as_one(one_rank_update, batch):
    group = policy_group(ppo_config("deepspeed.stage=2", EQUIVALENCE_LR), 2)
    stats2, _, after2 = update(group, batch)
    dispose(group)
    stats1, before, after1 = one_rank_update
    # The loss is normalised by the global token count, so splitting the batch over ranks changes only the
    # summation order: fp32 rounding, nothing more.
    assert stats2["policy/loss"] == pytest.approx(stats1["policy/loss"], abs=1e-6)
    assert stats1["policy/updates"] == stats2["policy/updates"] == 1
    mask = batch.action_mask.bool()
    assert torch.allclose(after1[mask], after2[mask], atol=1e-5)


def test_one_rank_trains_alike_with_the_plain_engine_and_with_deepspeed(one_rank_update, batch):
    """The one-rank fixture ran on the plain engine (deepspeed.single_rank=plain, the default); DeepSpeed's own
    engine on one rank (its own process group of one) takes the same step."""
    group = policy_group(ppo_config("deepspeed.stage=2", EQUIVALENCE_LR, "deepspeed.single_rank=deepspeed"), 1)
    assert group.call_rank0("engine_kind") == "deepspeed"
    stats_ds, _, after_ds = update(group, batch)
    dispose(group)
    stats1, _, after1 = one_rank_update
    assert stats_ds["policy/loss"] == pytest.approx(stats1["policy/loss"], abs=1e-6)
    assert stats_ds["policy/grad_norm"] == pytest.approx(stats1["policy/grad_norm"], rel=1e-5)
    mask = batch.action_mask.bool()
    assert torch.allclose(after1[mask], after_ds[mask], atol=1e-5)


def test_zero3_gives_the_same_update_as_zero2_and_its_gathered_weights_are_that_policy(one_rank_update, batch):
    import ray

    from actors.modeling import load_causal_lm
    from actors.policy import sequence_logprobs

    cfg = ppo_config("deepspeed.stage=3", EQUIVALENCE_LR)
    group = policy_group(cfg, 2)
    stats3, _, after3 = update(group, batch)
    # The weight sync's ZeRO-3 path: both ranks gather each parameter collectively, rank 0 ships the buckets.
    buckets = ray.get(group.call("weight_buckets", 1)[0])  # before dispose: the rank owns these objects
    dispose(group)
    gathered = load_causal_lm(cfg.model)
    named = gathered.state_dict(keep_vars=True)  # both names of a tied embedding
    for bucket in buckets:
        for name, tensor in bucket:
            named[name].data.copy_(tensor)
    tokens = TokenBatch(batch.input_ids, batch.attention_mask, batch.action_mask)
    mask = batch.action_mask.bool()
    synced = sequence_logprobs(gathered.eval(), tokens, cfg.ppo.rollout.temperature)
    assert torch.allclose(synced[mask], after3[mask], atol=1e-5)
    stats1, before, after1 = one_rank_update
    assert stats3["policy/loss"] == pytest.approx(stats1["policy/loss"], abs=1e-6)
    mask = batch.action_mask.bool()
    assert torch.allclose(after1[mask], after3[mask], atol=2e-5)
    assert (after1[mask] - before[mask]).abs().max() > 1e-4  # the update did move the policy


def test_nan_advantages_skip_the_step_and_leave_weights_alone(ray_session, batch):
    group = policy_group(ppo_config(), 1)
    bad = PolicyBatch(batch.input_ids, batch.attention_mask, batch.action_mask, batch.old_logprobs,
                      batch.ref_logprobs, torch.full_like(batch.advantages, float("nan")), batch.behaviour_logprobs)
    tokens = TokenBatch(batch.input_ids, batch.attention_mask, batch.action_mask)
    before = group.call("logprobs", tokens)[0]
    stats = group.call("train", with_old_logprobs(group, bad), 0, 0.0)[0]
    after = group.call("logprobs", tokens)[0]
    dispose(group)
    assert stats["policy/nan_skipped"] == 1 and stats["policy/updates"] == 0
    assert torch.equal(before, after)


def test_a_masking_rollout_correction_reports_its_share_of_every_response_token_and_never_nan(ray_session, batch):
    """ppo.rollout_correction=mask: tokens whose behaviour ratio lies outside [1/C, C] leave the loss. Its metric is
    the dropped share of all response tokens (not of the kept ones), and a mini-batch that drops every token trains
    nothing but yields no NaN either, with the KL loss on."""
    group = policy_group(ppo_config("ppo.rollout_correction=mask", "ppo.rollout_correction_cap=2.0"), 1)
    scored = with_old_logprobs(group, batch)
    mask = batch.action_mask.bool()
    far = scored.old_logprobs + torch.log(torch.tensor(10.0))  # ratio 0.1: outside [0.5, 2]
    rows = torch.arange(len(mask)).unsqueeze(1) < 4
    half = torch.where(rows, far, scored.old_logprobs)
    dropped = float(mask[:4].sum()) / float(mask.sum())
    try:
        stats = group.call("train", dataclasses.replace(scored, behaviour_logprobs=half), 0, 0.0)[0]
        assert stats["policy/correction_share"] == pytest.approx(dropped, rel=1e-6)
        everything = group.call("train", dataclasses.replace(scored, behaviour_logprobs=far), 0, 0.05)[0]
        assert everything["policy/correction_share"] == pytest.approx(1.0)
        assert everything["policy/nan_skipped"] == 0 and everything["policy/loss"] == 0.0
    finally:
        dispose(group)


def test_old_logprobs_are_the_engines_processed_logprobs(ray_session, tokenizer):
    """ppo.trainer_logprobs=processed: the policy's π_old is the distribution vLLM sampled from (repetition
    penalty, temperature 0.7, top_p 0.9), so PPO's ratio starts at 1; the temperature-only log-probs miss it."""
    cfg = ppo_config("ppo.trainer_logprobs=processed")
    policy = policy_group(cfg, 1)
    group, index = reserve([RoleResources("rollout", 1, cpus=0.5)])
    engine = RoleGroup("rollout", rollout_engine_class(cfg.ppo.rollout), 1, group, index["rollout"], 0.5, 0,
                       (str(POLICY_PATH), cfg.ppo.rollout, 0, 256))
    texts = ["Tell me a story.", "What is a cat?", "Say hello.", "Name a color.", "Who is Lily?", "Count to three."]
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": text}]) for text in texts * 4]
    try:
        samples = engine.call_rank0("generate", prompts)
        tokens = TokenBatch.from_samples(prompts, [s.response_ids for s in samples], tokenizer.pad_token_id)
        ratio, temperature_only = policy.call_rank0("old_logprobs", tokens)
    finally:
        engine.kill()
        release(group)
        dispose(policy)
    behaviour = tokens.per_token([s.response_logprobs for s in samples])
    mask = tokens.action_mask
    old, edge = fill_dropped(ratio, behaviour, mask)
    gap = (old - behaviour)[mask.bool()].abs()
    # Two float32 forwards (vLLM's and DeepSpeed's) differ by ~1e-5 after the temperature; a token within that of
    # the top-p cut can land on the other side of it (~0.3% of tokens), which renormalises its row a little.
    assert float(edge) < 0.02 and float((gap > 5e-5).float().mean()) < 0.02, (float(edge), gap.max())
    assert float(gap.median()) < 5e-6
    assert float(behaviour_mismatch(old, behaviour, mask)["behaviour_kl"]) < 1e-3
    plain = behaviour_mismatch(temperature_only, behaviour, mask)
    assert float(plain["behaviour_kl"]) > 0.05 and float(plain["ratio_outside_share"]) > 0.05, plain


# Both layouts of a CPU engine's weights (ppo.rollout.cpu_weights): the tiny policy's default keeps them plain and a
# sync copies into them; packed reorders them for oneDNN, and a sync rebuilds the reordered weights from the synced
# ones once the first sync, through vLLM's reload, proved that equal (ppo.rollout.packed_sync).
@pytest.mark.parametrize("lora, layout", [(False, "auto"), (True, "packed")], ids=["full-plain", "lora-packed"])
def test_weight_sync_makes_the_engine_match_the_policy(ray_session, batch, lora, layout):
    overrides = ["lora.enabled=true", "lora.rank=8", "lora.alpha=16"] if lora else []
    cfg = ppo_config(*overrides, f"ppo.rollout.cpu_weights={layout}")
    policy = policy_group(cfg, 1)
    group, index = reserve([RoleResources("rollout", 1, cpus=0.5)])
    engine = RoleGroup("rollout", rollout_engine_class(cfg.ppo.rollout), 1, group, index["rollout"], 0.5, 0,
                       (str(POLICY_PATH), cfg.ppo.rollout, 0, 256))
    engine.placement = group
    tokens = TokenBatch(batch.input_ids[:1], batch.attention_mask[:1], batch.action_mask[:1])
    n = int(tokens.attention_mask.sum())
    start = int(tokens.action_mask[0].nonzero()[0]) + 1
    prompt, response = tokens.input_ids[0, :start].tolist(), tokens.input_ids[0, start:n].tolist()

    def engine_logprobs():
        return torch.tensor(engine.call_rank0("sequence_logprobs", prompt, response))

    def policy_logprobs():
        return policy.call_rank0("raw_logprobs", tokens)[0, start - 1:n - 1]

    before = engine_logprobs()
    assert torch.allclose(before, policy_logprobs(), atol=1e-4)
    assert engine.call_rank0("weight_layout") == ("packed" if layout == "packed" else "plain")
    update(policy, batch)
    assert not torch.allclose(engine_logprobs(), policy_logprobs(), atol=1e-3)  # the engine is stale
    refs = policy.call_rank0("weight_buckets", 1)
    assert engine.call_rank0("load_weights", *refs) > 0
    after = engine_logprobs()
    assert torch.allclose(after, policy_logprobs(), atol=1e-4)
    assert (after - before).abs().max() > 1e-3
    # Plain weights become the synced buckets themselves (rollout.zero_copy_sync), but for the fused projections
    # whose parts these 1 MiB buckets split, which are copied; packed ones cannot.
    viewed, parameters = engine.call_rank0("zero_copy")
    assert 0 < viewed < parameters if layout != "packed" else viewed == parameters == 0
    # The collective path (ppo.weight_sync=collective: a gloo group here, NCCL between GPUs) after a second update.
    update(policy, batch)
    sync = WeightSync(SimpleNamespace(policy=policy, rollout=engine),
                      ppo_config(*overrides, "ppo.weight_sync=collective").ppo)
    assert sync() > 0 and (sync.generation, sync.last_collective, sync.fallbacks) == (1, True, 0)
    broadcast = engine_logprobs()
    assert torch.allclose(broadcast, policy_logprobs(), atol=1e-4)
    assert (broadcast - after).abs().max() > 1e-3
    assert engine.call_rank0("zero_copy") == (0, 0)  # a broadcast is copied: the group reuses its buffers
    # Through the store again, after a third update: viewed again where the engine is plain.
    update(policy, batch)
    assert engine.call_rank0("load_weights", *policy.call_rank0("weight_buckets", 1)) > 0
    assert torch.allclose(engine_logprobs(), policy_logprobs(), atol=1e-4)
    assert engine.call_rank0("zero_copy") == ((viewed, parameters) if layout != "packed" else (0, 0))
    # The later syncs rebuilt the packed layers (the first proved it, through vLLM's reload; a failed proof reads
    # packed-reload).
    assert engine.call_rank0("weight_layout") == ("packed" if layout == "packed" else "plain")
    if layout == "packed":
        assert engine.call_rank0("packed_sync_counts") == {"rebuilt": 2, "reloaded": 1}
        assert_the_proof_finds_a_changed_weight(engine, policy)
    engine.kill()
    with pytest.raises(RoleFailure, match="rollout rank 0 died during sequence_logprobs"):
        engine_logprobs()
    release(engine.placement)
    dispose(policy)


def assert_the_proof_finds_a_changed_weight(engine: RoleGroup, policy: RoleGroup) -> None:
    """The first sync's proof (actors/rollout/packed_rebuild.rebuild_agrees) compares every packed layer's output
    after vLLM's reload with its output rebuilt from the synced weights. Rebuilt from weights one of whose parts
    differs (as a loader that changed a weight on the way would make them), it names that layer; a sync missing a
    part is refused with nothing changed."""
    import ray

    def probe(rollout, refs):
        from actors.rollout.packed_rebuild import probe_outputs, packed_layers, rebuild, rebuild_agrees

        named = [pair for bucket in ray.get(refs) for pair in bucket]
        changed = [(name, tensor * 1.01 if name == "model.layers.1.self_attn.k_proj.weight" else tensor)
                   for name, tensor in named]
        missing = [(name, tensor) for name, tensor in named if name != "model.layers.0.mlp.up_proj.weight"]
        def outputs(worker):
            return probe_outputs(packed_layers(worker.model_runner.get_model()))

        llm = rollout.llm
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named})
        results = (llm.collective_rpc(rebuild_agrees, args=(named,))[0],
                   llm.collective_rpc(rebuild_agrees, args=(changed,))[0])
        before = llm.collective_rpc(outputs)[0]
        refused = llm.collective_rpc(rebuild, args=(missing,))[0]
        unchanged = all(torch.equal(a, b) for a, b in zip(before, llm.collective_rpc(outputs)[0]))
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named})
        return (*results, refused, unchanged)

    refs = policy.call_rank0("weight_buckets", 1)
    same, changed, missing, unchanged = ray.get(engine.actors[0].__ray_call__.remote(probe, refs))
    assert same is None
    assert changed == "layer model.layers.1.self_attn.qkv_proj rebuilt from the synced weights differs from vLLM's " \
                      "reload of them"
    assert missing == "layer model.layers.0.mlp.gate_up_proj needs model.layers.0.mlp.up_proj.weight, which the " \
                      "sync does not send under that name"
    assert unchanged  # refused before any layer changed (the layers then hold the changed weights' rebuild)


def test_a_lora_policy_with_adapters_off_is_the_starting_model(ray_session, batch):
    """ppo.reference=adapter_disabled: after an update the adapters move the policy, and switching them off
    gives back exactly the base model's log-probs (so no reference copy is needed)."""
    from actors.modeling import load_causal_lm
    from actors.policy import sequence_logprobs

    cfg = ppo_config("lora.enabled=true", "lora.rank=8", "lora.dropout=0.0", "ppo.reference=adapter_disabled")
    group = policy_group(cfg, 1)
    update(group, batch)
    tokens = TokenBatch(batch.input_ids, batch.attention_mask, batch.action_mask)
    adapters_on, adapters_off = group.call_rank0("logprobs", tokens), group.call_rank0("logprobs", tokens, True)
    dispose(group)
    base = sequence_logprobs(load_causal_lm(cfg.model).eval(), tokens, cfg.ppo.rollout.temperature)
    mask = batch.action_mask.bool()
    assert torch.allclose(adapters_off[mask], base[mask], atol=1e-5)
    assert (adapters_on[mask] - adapters_off[mask]).abs().max() > 1e-3
