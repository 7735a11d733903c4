"""How many trained-role processes load at once beside the loading engines (actors/role_start.py)."""

from __future__ import annotations

import pytest

from actors.role_start import Launch, all_fit, loading_budget


@pytest.mark.parametrize("cores, beside, budget", [
    (2, 1, 1),  # the tiny GRPO run here: the engine on one core, the trainers in turn on the other
    (4, 1, 3),
    (2, 2, 1),  # two engines fill the cores: the trainers still load, one process at a time
    (1, 1, 1),
    (16, 2, 14),  # engine and reward-model actor beside them
    (None, 1, None),  # cores not known (roles on other nodes): no limit
])
def test_the_trainers_get_the_cores_the_other_loads_leave_and_at_least_one(cores, beside, budget):
    assert loading_budget(cores, beside) == budget


def launch(role: str, ranks: int) -> Launch:
    return Launch(role, ranks, spawn=lambda: None, ready=lambda group: [], method="setup")


def test_roles_load_at_once_only_when_all_their_ranks_fit():
    roles = [launch("policy", 2), launch("value", 2), launch("reference", 1)]
    assert all_fit(roles, 5) and all_fit(roles, None)
    assert not all_fit(roles, 4)  # three roles on a 4-core node with one engine: five ranks, not three
