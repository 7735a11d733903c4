"""A vLLM engine killed mid-run is replaced in its placement bundle and re-synced from the policy: the
replacement answers the interrupted call with the trained weights, not the starting ones; past
rollout.max_replacements the death is reported like any other. Over the collective weight sync, a sync the
dead engine was part of falls back to the object store, and the next one forms a new group with the replacement."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import ray
import torch

from actors.fault import engine_group, read_faults
from actors.ppo_roles import engine_callbacks
from actors.protocol import TokenBatch
from actors.rollout.engines import rollout_engine_class
from actors.roster import write_roster
from cluster.placement import RoleResources, release, reserve
from common.errors import RoleFailure
from tests.conftest import POLICY_PATH
from tests.ray.test_ppo_roles import batch, dispose, policy_group, ppo_config, tokenizer, update  # noqa: F401

pytestmark = [pytest.mark.ray]


class Revivable:
    """An engine stand-in: answers `ping`; a replacement's revival fails where told."""

    def ping(self) -> str:
        return "up"

    def die(self) -> None:
        """The process ends before any call queued after this one runs (ray.kill races with a call sent next)."""
        import os

        os._exit(1)

    def revive(self, fails: bool) -> None:
        if fails:
            raise ValueError("cannot load the policy's weights")


def test_a_replacement_that_fails_to_revive_is_named_by_the_rank_it_replaced(ray_session, tmp_path):
    group, index = reserve([RoleResources("rollout", 3, cpus=0.25)])
    engines = engine_group(lambda actor: [actor.ping.remote(), actor.revive.remote(True)], lambda rank, why: None,
                           max_replacements=1)("rollout", Revivable, 3, group, index["rollout"], 0.25, 0, ())
    try:
        assert engines.call("ping") == ["up"] * 3
        engines.actors[2].die.remote()
        with pytest.raises(RoleFailure, match="rollout rank 2 failed in revive: .*cannot load the policy's weights"):
            engines.call("ping")
    finally:
        engines.kill()
        release(group)


def test_a_call_sent_before_a_replacement_goes_to_the_replacement_without_a_second_one(ray_session):
    """Async rollouts' prefetched batch was sent to the engine that then died: settling it must not replace the
    healthy replacement (spending a second replacement, or failing the run at max_replacements=1)."""
    group, index = reserve([RoleResources("rollout", 2, cpus=0.25)])
    engines = engine_group(lambda actor: [actor.ping.remote()], lambda rank, why: None,
                           max_replacements=1)("rollout", Revivable, 2, group, index["rollout"], 0.25, 0, ())
    try:
        engines.actors[1].die.remote()
        prefetched = engines.submit("ping")  # queued behind the death: rank 1's fails
        assert engines.call("ping") == ["up", "up"] and engines.replacements == 1  # replaced once
        assert engines.settle("ping", prefetched, [(), ()]) == ["up", "up"] and engines.replacements == 1
    finally:
        engines.kill()
        release(group)


# Slow: a dead engine's replacement and re-sync run by default in the sabotaged and chaos PPO runs; the limit on
# replacements is this test's own.
@pytest.mark.slow
def test_dead_engine_is_replaced_and_resynced_then_the_limit_holds(ray_session, batch, tmp_path):  # noqa: F811
    cfg = ppo_config("ppo.rollout.max_replacements=1")
    policy = policy_group(cfg, 1)
    group, index = reserve([RoleResources("rollout", 1, cpus=0.5)])
    # What the PPO loop hands the engine group: its roles (the policy to re-sync from), the steps done (3: the
    # replacement's seed counter), and a roster that is rewritten after a replacement.
    roles = SimpleNamespace(policy=policy, rollout=None)
    roster = lambda: write_roster(tmp_path, {"run": "replace-test"}, {"rollout": roles.rollout})  # noqa: E731
    revive, replaced = engine_callbacks(roles, tmp_path, 64, lambda: 3, roster)
    engine_class = rollout_engine_class(cfg.ppo.rollout)
    roles.rollout = engine_group(revive, replaced, cfg.ppo.rollout.max_replacements)(
        "rollout", engine_class, 1, group, index["rollout"], 0.5, 0, (str(POLICY_PATH), cfg.ppo.rollout, 0, 256),
        name_prefix="replace-test")
    tokens = batch.input_ids[:1], batch.attention_mask[:1], batch.action_mask[:1]
    n, start = int(tokens[1].sum()), int(tokens[2][0].nonzero()[0]) + 1
    prompt, response = tokens[0][0, :start].tolist(), tokens[0][0, start:n].tolist()

    def engine_logprobs():
        return torch.tensor(roles.rollout.call("sequence_logprobs", prompt, response)[0])

    def policy_logprobs():
        return policy.call_rank0("raw_logprobs", TokenBatch(*tokens))[0, start - 1:n - 1]

    try:
        update(policy, batch)  # the policy moves away from the weights the engine started with
        stale = engine_logprobs()
        assert not torch.allclose(stale, policy_logprobs(), atol=1e-3)
        first_name = roles.rollout.names[0]
        ray.kill(ray.get_actor(first_name, namespace="rayalign"))

        replaced = engine_logprobs()  # the interrupted call, answered by the replacement
        assert torch.allclose(replaced, policy_logprobs(), atol=1e-4)
        assert roles.rollout.names[0] != first_name and roles.rollout.replacements == 1
        [fault] = read_faults(tmp_path)
        assert (fault["event"], fault["role"], fault["rank"], fault["step"]) == ("engine_replaced", "rollout", 0, 4)
        roster = json.loads((tmp_path / "roles.json").read_text())
        assert [a["name"] for a in roster["actors"] if a["role"] == "rollout"] == [roles.rollout.names[0]]

        ray.kill(roles.rollout.actors[0])
        with pytest.raises(RoleFailure, match="rollout rank 0 died during sequence_logprobs"):
            engine_logprobs()
    finally:
        roles.rollout.kill()
        release(group)
        dispose(policy)


def test_a_collective_sync_an_engine_died_in_falls_back_and_the_next_one_regroups(ray_session, batch,  # noqa: F811
                                                                                   tmp_path):
    """ppo.weight_sync=collective (a gloo group): the engine dies between syncs; the next sync's broadcast fails at
    once for every member, is redone through the object store (which replaces the engine), and the sync after
    forms a new group with the replacement and broadcasts over it. Every sync leaves the engine with the policy's
    weights."""
    from actors.ppo_weight_sync import WeightSync

    cfg = ppo_config("ppo.weight_sync=collective")
    policy = policy_group(cfg, 1)
    group, index = reserve([RoleResources("rollout", 1, cpus=0.5)])
    roles = SimpleNamespace(policy=policy, rollout=None)
    sync: list[WeightSync] = []
    revive, replaced = engine_callbacks(roles, tmp_path, 64, lambda: 1, lambda: sync[0].regroup())
    roles.rollout = engine_group(revive, replaced, 1)(
        "rollout", rollout_engine_class(cfg.ppo.rollout), 1, group, index["rollout"], 0.5, 0,
        (str(POLICY_PATH), cfg.ppo.rollout, 0, 256), name_prefix="regroup-test")
    tokens = batch.input_ids[:1], batch.attention_mask[:1], batch.action_mask[:1]
    n, start = int(tokens[1].sum()), int(tokens[2][0].nonzero()[0]) + 1
    prompt, response = tokens[0][0, :start].tolist(), tokens[0][0, start:n].tolist()

    def engine_matches_policy() -> bool:
        engine = torch.tensor(roles.rollout.call("sequence_logprobs", prompt, response)[0])
        return torch.allclose(engine, policy.call_rank0("raw_logprobs", TokenBatch(*tokens))[0, start - 1:n - 1],
                              atol=1e-4)

    try:
        sync.append(WeightSync(roles, cfg.ppo))
        sync[0].prepare()
        update(policy, batch)
        assert sync[0]() > 0 and (sync[0].generation, sync[0].last_collective) == (1, True)
        assert engine_matches_policy()

        update(policy, batch)
        first_name = roles.rollout.names[0]
        ray.kill(ray.get_actor(first_name, namespace="rayalign"))
        assert sync[0]() > 0  # through the object store, into the replacement
        assert (sync[0].last_collective, sync[0].fallbacks, roles.rollout.replacements) == (False, 1, 1)
        assert roles.rollout.names[0] != first_name and engine_matches_policy()

        update(policy, batch)
        assert sync[0]() > 0 and (sync[0].generation, sync[0].last_collective, sync[0].fallbacks) == (2, True, 1)
        assert engine_matches_policy()
    finally:
        roles.rollout.kill()
        release(group)
        dispose(policy)
