"""A reward function plugged in by file path, on the real PPO engine: GRPO learns the verifiable animal-story task
(python -m jobs.make_task animals; configs/rewards/names_the_animal.py), scored on held-out prompts before and
after; a function that does not import is one line before Ray starts; one that raises mid-run names itself and
the record (slow)."""

from __future__ import annotations

import statistics

import pytest

from common.config import load_config
from common.errors import RewardFunctionError
from common.metrics import read_jsonl
from jobs.make_task import main as make_task
from jobs.ppo import run
from tests.conftest import TINY_CPU
from tests.helpers import run_job

pytestmark = [pytest.mark.integration]
# Held-out (32 prompts, greedy) share of stories naming the animal at steps 0 → 10 → 20, and the training share
# first-5 → last-5 steps, measured for seeds 7 / 2 / 3 / 1: 0.12 → 0.50 → 0.78 (0.04 → 0.48), 0.03 → 0.91 → 0.94
# (0.17 → 0.82), 0.03 → 0.78 → 0.75 (0.28 → 0.71), 0.06 → 0.03 → 0.16 (0.00 → 0.10). The test runs seed 7; the
# margins sit well under its gains and far above what an unlearned policy drifts by.
HELD_OUT_GAIN, TRAIN_GAIN = 0.3, 0.2
REWARD = "configs/rewards/names_the_animal.py:reward"
TASK = ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=8", "ppo.rollout_batch_size=4",
        "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.lr=5e-4", "ppo.steps=20", "ppo.eval_every=10",
        "ppo.eval_prompts=32", "ppo.save_every=100", "ppo.export=false", "ppo.report_prompts=[]",
        "ppo.kl.controller=fixed", "ppo.rollout.max_new_tokens=48", "ppo.reward.enabled_terms=[kl]", "run.seed=7"]


def task_file(folder):
    return make_task(["animals", "--out", str(folder / "animals.jsonl")])


@pytest.fixture(scope="module")
def learned(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("animals")
    cfg = load_config(TINY_CPU, [f"run.output_root={folder}", f"ppo.prompt_files=[{task_file(folder)}]", *TASK,
                                 f"ppo.reward.functions=[{{callable: '{REWARD}', name: names_animal}}]"])
    result = run(cfg)
    return result, read_jsonl(result.output_dir / "metrics.jsonl")


@pytest.mark.ray
def test_grpo_learns_a_reward_function_given_by_file_path(learned):
    _, rows = learned
    held = {row["step"]: row["eval/names_animal_mean"] for row in rows if "eval/names_animal_mean" in row}
    train = [row["reward/names_animal"] for row in rows if "reward/names_animal" in row]
    assert sorted(held) == [0, 10, 20]
    assert held[20] > held[0] + HELD_OUT_GAIN, held
    assert statistics.fmean(train[-5:]) > statistics.fmean(train[:5]) + TRAIN_GAIN, train
    assert all(row["reward/names_animal_weighted"] == row["reward/names_animal"] for row in rows if row["step"] > 0)


def test_a_function_that_does_not_import_is_one_line_before_ray(tmp_path):
    result = run_job("jobs.ppo", "--config", str(TINY_CPU), f"run.output_root={tmp_path}",
                     "ppo.reward.enabled_terms=[kl]", "ppo.reward.functions=[{callable: 'configs/rewards/nope.py:f'}]",
                     timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"jobs.ppo: error: ppo.reward.functions[0].callable: file {TINY_CPU.parent / 'rewards' / 'nope.py'} "
        f"does not exist")
    assert not (tmp_path / "tiny-cpu").exists()


@pytest.mark.slow  # the default tier checks the message and the record in tests/unit/test_reward_functions.py
@pytest.mark.ray
def test_a_function_that_raises_mid_run_names_itself_and_the_record(ray_session, tmp_path):
    prompts = task_file(tmp_path)
    broken = tmp_path / "broken.py"
    broken.write_text("def reward(prompts, responses, animal):\n"
                      "    if 'owl' in animal:\n        raise ValueError('no owls')\n"
                      "    return [0.0] * len(responses)\n")
    cfg = load_config(TINY_CPU, [f"run.output_root={tmp_path}", f"ppo.prompt_files=[{prompts}]", *TASK,
                                 "ppo.steps=4", "ppo.eval_every=null",
                                 f"ppo.reward.functions=[{{callable: '{broken}:reward'}}]"])
    with pytest.raises(RewardFunctionError, match=rf"^reward function reward \({broken}:reward\) raised ValueError: "
                                                  rf"no owls for the record from {prompts}:\d+; "):
        run(cfg)
