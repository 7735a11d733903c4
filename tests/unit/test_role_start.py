"""How many trained roles load at once beside the loading engines (actors/role_start.py)."""

from __future__ import annotations

import pytest

from actors.role_start import trainer_slots


@pytest.mark.parametrize("cores, beside, trainers, slots", [
    (2, 1, 2, 1),  # the tiny GRPO run here: engine on one core, policy then reference on the other
    (2, 1, 3, 1),  # with a value model: still one at a time
    (4, 1, 2, 2),  # a core for every loading process: all at once
    (16, 2, 3, 3),  # a big node: never more slots than trainers
    (2, 2, 2, 1),  # two engines fill the cores: the trainers still load, one at a time
    (1, 1, 2, 1),
    (4, 2, 3, 2),  # engine and reward-model actor beside them
])
def test_the_trainers_get_the_cores_the_other_loads_leave_and_at_least_one(cores, beside, trainers, slots):
    assert trainer_slots(cores, beside, trainers) == slots


def test_cores_not_known_load_every_trainer_at_once():
    assert trainer_slots(None, 1, 3) == 3
