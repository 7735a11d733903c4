"""Trained roles loading in turn on real Ray actors (actors/role_start.py): in order, each after the one before is
loaded when the budget holds one, as many as their ranks fit otherwise, all at once without a budget, and a failed
load, a trainer's or an engine's, named at once."""

from __future__ import annotations

import pytest

from actors.group import RoleGroup
from actors.role_start import Launch, launch_in_turn
from cluster.placement import RoleResources, bundles_on_node, release, reserve
from common.errors import RoleFailure

pytestmark = [pytest.mark.ray]

RANKS = {"policy": 2, "value": 1, "reference": 1}


class Loader:
    """A role whose load is a wait (short unless told), or a failure."""

    def __init__(self, fails: bool, seconds: float = 0.2):
        self.fails, self.seconds = fails, seconds

    def setup(self) -> str:
        import os
        import time

        time.sleep(self.seconds)
        if self.fails:
            raise ValueError("no weights here")
        return f"loaded in {os.getpid()}"


@pytest.fixture
def placed(ray_session):
    group, index = reserve([RoleResources(role, ranks, cpus=0.5) for role, ranks in RANKS.items()])
    yield group, index
    release(group)


class Recorded:
    """A Launch per role that logs, on the driver, when it spawns (with the roles loaded by then) and when it
    submits its load; kills every group it made."""

    def __init__(self, placed, failing: str | None = None, seconds: float = 0.2):
        self.placed, self.failing, self.seconds = placed, failing, seconds
        self.events, self.groups, self.submitted = [], {}, {}

    def launches(self) -> list[Launch]:
        return [Launch(role, ranks, self._spawn(role), self._ready(role), "setup") for role, ranks in RANKS.items()]

    def loaded(self) -> list[str]:
        import ray

        return sorted(role for role, refs in self.submitted.items()
                      if len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs))

    def _spawn(self, role: str):
        def create() -> RoleGroup:
            group, index = self.placed
            self.events.append(("spawn", role, self.loaded()))
            self.groups[role] = RoleGroup(role, Loader, RANKS[role], group, index[role], 0.5, 0,
                                          (role == self.failing, self.seconds), connect=False)
            return self.groups[role]
        return create

    def _ready(self, role: str):
        def submit(group: RoleGroup) -> list:
            self.events.append(("ready", role))
            self.submitted[role] = group.submit("setup")
            return self.submitted[role]
        return submit

    def kill(self) -> None:
        for group in self.groups.values():
            group.kill()


def test_a_budget_of_one_loads_each_role_after_the_one_before_and_a_failure_stops_the_rest(placed):
    run = Recorded(placed, failing="value")
    try:
        with pytest.raises(RoleFailure, match="value rank 0 failed in setup: .*no weights here"):
            launch_in_turn(run.launches(), budget=1)
        # The two-rank policy is larger than the budget and starts alone; the reference never starts.
        assert run.events == [("spawn", "policy", []), ("ready", "policy"),
                              ("spawn", "value", ["policy"]), ("ready", "value")]
    finally:
        run.kill()


def test_roles_start_together_as_far_as_their_ranks_fit_the_budget(placed):
    run = Recorded(placed)
    try:
        loaded = launch_in_turn(run.launches(), budget=3)
        # policy (2 ranks) and value (1) fill the budget of 3; the reference waits for one of them.
        assert run.events[:4] == [("spawn", "policy", []), ("spawn", "value", []),
                                  ("ready", "policy"), ("ready", "value")]
        assert run.events[4][:2] == ("spawn", "reference") and run.events[4][2] in (["policy"], ["value"],
                                                                                     ["policy", "value"])
        assert sorted(loaded) == ["policy", "reference", "value"]
        assert len({result for results in loaded.values() for result in results}) == 4  # four processes
    finally:
        run.kill()


def test_the_engines_cores_join_the_budget_once_they_are_up(placed):
    import ray

    run = Recorded(placed)
    try:
        engines_up = [ray.put("up"), ray.put("up")]  # two engines already up: their cores are free at the first wake
        launch_in_turn(run.launches(), budget=1, engines_up=engines_up)
        # The policy (2 ranks) starts alone in a budget of 1; the value then fits the budget of 3 beside it before
        # anything has loaded; the reference (3 + 1 > 3) waits for a role to finish.
        assert run.events[:4] == [("spawn", "policy", []), ("ready", "policy"), ("spawn", "value", []),
                                  ("ready", "value")]
        assert run.events[4][:2] == ("spawn", "reference") and run.events[4][2]
    finally:
        run.kill()


def test_an_engine_that_fails_to_load_ends_the_start_before_the_trainers_have_loaded(placed):
    import ray

    engine_group, engine_index = reserve([RoleResources("rollout", 1, cpus=0.5)])
    engine = RoleGroup("rollout", Loader, 1, engine_group, engine_index["rollout"], 0.5, 0, (True,), connect=False)
    run = Recorded(placed, seconds=60)  # trainers far slower to load than the engine is to fail
    try:
        engines_up = engine.submit("setup")
        with pytest.raises(RoleFailure, match="rollout rank 0 failed in setup: .*no weights here"):
            launch_in_turn(run.launches(), budget=1, engines_up=engines_up,
                           check_engines=lambda ended: engine.check(engines_up, ended, "setup"))
        assert run.events == [("spawn", "policy", []), ("ready", "policy")]
        assert not ray.wait(run.submitted["policy"], timeout=0)[0]  # raised while the policy was still loading
    finally:
        run.kill()
        engine.kill()
        release(engine_group)


def test_without_a_budget_every_role_spawns_before_any_is_waited_for(placed):
    run = Recorded(placed)
    try:
        launch_in_turn(run.launches(), budget=None)
        assert run.events == [("spawn", "policy", []), ("spawn", "value", []), ("spawn", "reference", []),
                              ("ready", "policy"), ("ready", "value"), ("ready", "reference")]
    finally:
        run.kill()


def test_a_placement_groups_bundles_are_on_this_node_and_no_other(placed):
    import ray

    group, index = placed
    here = ray.get_runtime_context().get_node_id()
    assert bundles_on_node(group, index["policy"] + index["reference"], here)
    assert not bundles_on_node(group, index["policy"], "f" * len(here))
