"""Trained roles loading in turn on real Ray actors (actors/role_start.py): in order, each after the one before is
loaded when there is one slot, all at once when there are enough, and a failed load named at once."""

from __future__ import annotations

import pytest

from actors.group import RoleGroup
from actors.role_start import Launch, launch_in_turn
from cluster.placement import RoleResources, bundles_on_node, release, reserve
from common.errors import RoleFailure

pytestmark = [pytest.mark.ray]


class Loader:
    """A role whose load is a short wait, or a failure."""

    def __init__(self, fails: bool):
        self.fails = fails

    def setup(self) -> str:
        import os
        import time

        time.sleep(0.2)
        if self.fails:
            raise ValueError("no weights here")
        return f"loaded in {os.getpid()}"


@pytest.fixture
def placed(ray_session):
    group, index = reserve([RoleResources(role, 1, cpus=0.5) for role in ("policy", "value", "reference")])
    yield group, index
    release(group)


def launches(placed, events: list, failing: str | None = None) -> tuple[list[Launch], dict]:
    """A Launch per role that logs, on the driver, when it spawns (and which roles are loaded by then) and when it
    submits its load."""
    import ray

    group, index = placed
    groups, submitted = {}, {}

    def spawn(role):
        def create():
            events.append(("spawn", role, sorted(r for r, refs in submitted.items()
                                                 if len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs))))
            groups[role] = RoleGroup(role, Loader, 1, group, index[role], 0.5, 0, (role == failing,), connect=False)
            return groups[role]
        return create

    def ready(role):
        def submit(loaded: RoleGroup):
            events.append(("ready", role))
            submitted[role] = loaded.submit("setup")
            return submitted[role]
        return submit

    return [Launch(role, spawn(role), ready(role), "setup") for role in ("policy", "value", "reference")], groups


def test_one_slot_loads_each_role_after_the_one_before_and_a_failure_stops_the_rest(placed):
    events = []
    steps, groups = launches(placed, events, failing="value")
    try:
        with pytest.raises(RoleFailure, match="value rank 0 failed in setup: .*no weights here"):
            launch_in_turn(steps, slots=1)
        assert events == [("spawn", "policy", []), ("ready", "policy"),
                          ("spawn", "value", ["policy"]), ("ready", "value")]  # the reference never starts
    finally:
        for group in groups.values():
            group.kill()


def test_enough_slots_spawn_every_role_before_any_is_waited_for(placed):
    events = []
    steps, groups = launches(placed, events)
    try:
        loaded = launch_in_turn(steps, slots=3)
        assert events == [("spawn", "policy", []), ("spawn", "value", []), ("spawn", "reference", []),
                          ("ready", "policy"), ("ready", "value"), ("ready", "reference")]
        assert sorted(loaded) == ["policy", "reference", "value"]
        assert len({result for results in loaded.values() for result in results}) == 3  # three processes
    finally:
        for group in groups.values():
            group.kill()


def test_a_placement_groups_bundles_are_on_this_node_and_no_other(placed):
    import ray

    group, index = placed
    here = ray.get_runtime_context().get_node_id()
    assert bundles_on_node(group, index["policy"] + index["reference"], here)
    assert not bundles_on_node(group, index["policy"], "f" * len(here))
