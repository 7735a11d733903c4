"""jobs.make_task: the verifiable animal-story prompts, made by code, in the format PPO reads."""

from __future__ import annotations

import json

import pytest

from common.records import read_many
from jobs.make_task import ANIMALS, TEMPLATES, main


def test_every_animal_in_every_template_with_its_answer_column_and_the_same_order_for_a_seed(tmp_path):
    path = main(["animals", "--out", str(tmp_path / "a.jsonl"), "--repeats", "2", "--seed", "3"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2 * len(TEMPLATES) * len(ANIMALS)
    assert all(row["prompt"].count(row["animal"]) == 1 and row["animal"] in ANIMALS for row in rows)
    again = main(["animals", "--out", str(tmp_path / "b.jsonl"), "--repeats", "2", "--seed", "3"])
    assert again.read_text() == path.read_text() and not list(tmp_path.glob(".*.tmp"))
    [first] = read_many([path], limit=1)  # PPO reads the prompt, and the animal as a column
    assert first["messages"] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert first["columns"] == {"animal": rows[0]["animal"]}


def test_a_bad_count_is_refused_with_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["animals", "--out", str(tmp_path / "a.jsonl"), "--repeats", "0"])
    assert info.value.code == 2 and "--repeats must be at least 1, got 0" in capsys.readouterr().err
