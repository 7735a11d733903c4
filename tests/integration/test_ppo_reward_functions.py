"""A reward function plugged in by file path, on the real PPO engine: GRPO with dynamic sampling learns the
verifiable animal-story task (python -m jobs.make_task animals; configs/rewards/names_the_animal.py), scored on
held-out prompts before and after, greedily and as pass@k; a function that does not import is one line before Ray
starts; one that raises mid-run names itself and the record (slow)."""

from __future__ import annotations

import pytest

from common.config import load_config
from common.errors import RewardFunctionError
from common.metrics import read_jsonl
from jobs.make_task import main as make_task
from jobs.ppo import run
from tests.conftest import TINY_CPU
from tests.helpers import run_job

pytestmark = [pytest.mark.integration]
# Held-out (32 prompts, greedy) share of stories naming the animal, seeds 7 / 2 / 3 / 1 (measured):
#   plain GRPO, steps 0 → 10 → 20:          0.12 → 0.50 → 0.78, 0.03 → 0.91 → 0.94, 0.03 → 0.78 → 0.75, 0.06 → 0.03 → 0.16
#   dynamic sampling, steps 0 → 5 → 10:     0.12 → 0.56 → 0.78, 0.03 → 0.84 → 1.00, 0.03 → 0.69 → 0.97, 0.06 → 0.75 → 0.81
# pass@4 (4 sampled answers each) with dynamic sampling, steps 0 → 10: 0.16 → 0.81, 0.06 → 1.00, 0.12 → 1.00,
# 0.12 → 0.91. The test runs seed 7; the margins sit well under its gains and far above what an unlearned policy
# drifts by.
HELD_OUT_GAIN, PASS_GAIN = 0.3, 0.3
REWARD = "configs/rewards/names_the_animal.py:reward"
TASK = ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=8", "ppo.rollout_batch_size=4",
        "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.lr=5e-4", "ppo.steps=10", "ppo.eval_every=5",
        "ppo.eval_prompts=32", "ppo.save_every=100", "ppo.export=false", "ppo.report_prompts=[]",
        "ppo.kl.controller=fixed", "ppo.rollout.max_new_tokens=48", "ppo.reward.enabled_terms=[kl]", "run.seed=7"]
GROUPS = 4  # rollout_batch_size


def task_file(folder):
    return make_task(["animals", "--out", str(folder / "animals.jsonl")])


@pytest.fixture(scope="module")
def learned(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("animals")
    cfg = load_config(TINY_CPU, [f"run.output_root={folder}", f"ppo.prompt_files=[{task_file(folder)}]", *TASK,
                                 "ppo.dynamic_sampling.enabled=true", "ppo.eval_samples=4",
                                 f"ppo.reward.functions=[{{callable: '{REWARD}', name: names_animal, "
                                 f"success_at: 1.0}}]"])
    result = run(cfg)
    return result, read_jsonl(result.output_dir / "metrics.jsonl")


@pytest.mark.ray
def test_grpo_with_dynamic_sampling_learns_a_reward_function_given_by_file_path(learned):
    _, rows = learned
    held = {row["step"]: row for row in rows if "eval/names_animal_mean" in row}
    assert sorted(held) == [0, 5, 10]
    assert held[10]["eval/names_animal_mean"] > held[0]["eval/names_animal_mean"] + HELD_OUT_GAIN, held
    assert held[10]["eval/names_animal_pass@4"] > held[0]["eval/names_animal_pass@4"] + PASS_GAIN, held
    for row in held.values():  # a 0/1 reward solved at 1.0: pass@1 is the sampled mean, and pass@4 is at least it
        assert row["eval/names_animal_pass@1"] == pytest.approx(row["eval/names_animal_mean@4"], abs=1e-12)
        assert row["eval/names_animal_pass@4"] >= row["eval/names_animal_pass@1"]
    assert all(row["reward/names_animal_weighted"] == row["reward/names_animal"] for row in rows if row["step"] > 0)


@pytest.mark.ray
def test_dynamic_sampling_trains_only_on_groups_with_a_spread_unless_it_ran_out_of_rounds(learned):
    _, rows = learned
    steps = [row for row in rows if row["step"] > 0]
    assert len(steps) == 10
    for row in steps:
        rounds, filled = row["dynamic/rounds"], row["dynamic/filled_groups"]
        assert 1 <= rounds <= 3 and row["dynamic/groups_sampled"] == GROUPS * rounds
        assert (row["dynamic/extra_tokens"] > 0) == (rounds > 1)
        assert row["dynamic/kept_share"] * row["dynamic/groups_sampled"] >= GROUPS - filled - 1e-9
        assert filled == 0 or rounds == 3  # only a step that used every round fills in
        # A group kept for its reward spread has a spread in its return too; only filled groups can have none.
        assert row["advantage/zero_spread_groups"] <= filled / GROUPS, row
    # At step 1 (policy = reference) the sparse reward leaves most groups flat: more rounds were drawn.
    assert steps[0]["dynamic/rounds"] > 1 and steps[0]["time/dynamic"] > 0


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
