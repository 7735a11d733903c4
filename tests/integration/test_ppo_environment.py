"""Multi-turn episodes on the real PPO engine: GRPO (with dynamic sampling) learns the follow_up environment, whose
second turn pays when the model uses the word the environment asked about, scored on held-out prompts by greedy
episodes before and after. The environment is given by file path and fails on purpose for one word: those episodes
end with reward 0, are counted and logged, and the run goes on."""

from __future__ import annotations

import pytest

from common.config import load_config
from common.metrics import read_jsonl
from jobs.make_task import main as make_task
from jobs.ppo import run
from tests.conftest import TINY_CPU

pytestmark = [pytest.mark.integration, pytest.mark.ray]
# Held-out share of second answers using the asked-about word (32 prompts, greedy episodes), steps 0 → 6 → 12, GRPO
# 8 answers × 4 prompts with dynamic sampling, measured with the shipped follow_up for seeds 7 / 2 / 3 / 1:
# 0.00 → 0.31 → 0.47, 0.06 → 0.47 → 0.38, 0.03 → 0.44 → 0.44, 0.03 → 0.50 → 0.84. Without dynamic sampling seeds
# 7 / 2 / 3 went 0.00 → 0.00 → 0.38, 0.06 → 0.03 → 0.06, 0.03 → 0.34 → 0.41: most groups score all 0 at first.
HELD_OUT_GAIN = 0.2
FLAKY = '''
from actors.environments import FollowUp


class Flaky(FollowUp):
    """follow_up, except that it fails on the word "book" (one prompt in twelve)."""

    def step(self, assistant):
        if self.word == "book" and self.turn == 1:
            raise RuntimeError("no books today")
        return super().step(assistant)
'''
TASK = ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=8", "ppo.rollout_batch_size=4",
        "ppo.mini_batch_size=16", "ppo.ppo_epochs=2", "ppo.lr=5e-4", "ppo.steps=12", "ppo.eval_every=6",
        "ppo.eval_prompts=32", "ppo.save_every=100", "ppo.export=false", "ppo.report_prompts=[]",
        "ppo.kl.controller=fixed", "ppo.rollout.max_new_tokens=32", "ppo.reward.enabled_terms=[kl]",
        "ppo.dynamic_sampling.enabled=true", "run.seed=7"]


@pytest.fixture(scope="module")
def episodes(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("follow_up")
    prompts = make_task(["follow-up", "--out", str(folder / "follow_up.jsonl")])
    (folder / "flaky.py").write_text(FLAKY)
    cfg = load_config(TINY_CPU, [f"run.output_root={folder}", f"ppo.prompt_files=[{prompts}]", *TASK,
                                 f"ppo.environment.name={folder / 'flaky.py'}:Flaky"])
    result = run(cfg)
    return result, read_jsonl(result.output_dir / "metrics.jsonl")


def test_grpo_learns_to_use_the_word_the_environment_asked_about(episodes):
    _, rows = episodes
    held = {row["step"]: row["eval/env_reward"] for row in rows if "eval/env_reward" in row}
    assert sorted(held) == [0, 6, 12]
    assert held[12] > held[0] + HELD_OUT_GAIN, held
    steps = [row for row in rows if row["step"] > 0]
    assert all(row["env/turns_mean"] <= 2.0 for row in steps)
    assert all(row["env/reward_turn_1"] == 0.0 for row in steps)  # the first answer is never paid


def test_a_failing_environment_ends_only_its_episodes_and_they_are_counted(episodes):
    result, rows = episodes
    steps = [row for row in rows if row["step"] > 0]
    assert len(steps) == 12  # the run went on
    assert sum(row["env/errors"] for row in steps) > 0
    assert all(row["env/errors"] < 32 for row in steps)
