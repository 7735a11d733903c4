"""Chaos: one PPO run with every kind of role (a vLLM engine, the reference, a reward-model actor, two policy and
two value ranks) while a seeded killer SIGKILLs random role processes at random moments (tests/chaos.py). The run
finishes; every step is logged exactly once; the final checkpoint loads; faults.jsonl lists each kill and how it
was recovered. Default tier: 2 kills; slow tier: 5."""

from __future__ import annotations

import pytest

from actors.fault import read_faults
from common.config import load_config
from common.metrics import read_jsonl
from jobs.ppo import run
from tests.chaos import ChaosKiller, plan, steps_logged, summary
from tests.conftest import TINY_CPU
from tests.reward_helpers import make_reward_dir

pytestmark = [pytest.mark.integration, pytest.mark.ray]

SAVE_EVERY = 2
# About one tiny GAE step on 2 cores (0.4-0.6 s since PPO packs its sequences; 1.5 s before): the blows' delays
# spread over a whole step. A delay longer than a step lets the run finish its free last steps before a blow lands.
STEP_SECONDS = 0.5


def steps_for(kills: int) -> int:
    return kills + 6  # every blow after a distinct step, the last three steps free of blows (tests/chaos.py)


def chaos_run(root, seed: int, kills: int) -> dict:
    reward_dir = make_reward_dir(root / "rm")
    cfg = load_config(TINY_CPU, [
        f"run.output_root={root}", "ppo.rollout_batch_size=16", "ppo.mini_batch_size=8", "ppo.ppo_epochs=1",
        "ppo.max_prompts=64", "ppo.rollout.max_new_tokens=16", "ppo.export=false", "ppo.cpus_per_actor=0.5",
        "ppo.advantage_estimator=gae", "ppo.policy_workers=2", "ppo.value_workers=2",
        "ppo.reward.rm_source=model", f"ppo.reward.rm_path={reward_dir}", f"ppo.steps={steps_for(kills)}",
        f"ppo.save_every={SAVE_EVERY}", f"ppo.max_restarts={kills}", f"ppo.stateless_max_restarts={kills}",
        f"ppo.rollout.max_replacements={kills}"])
    out = cfg.run.output_dir("ppo")
    killer = ChaosKiller(out, plan(seed, kills, steps_for(kills), STEP_SECONDS))
    killer.start()
    result = run(cfg)
    killer.join(timeout=60)
    assert not killer.errors, killer.errors
    report = summary(out)
    print(f"chaos seed {seed}: {report}")
    return {"result": result, "out": out, "summary": report, "cfg": cfg}


def check_survived(chaos: dict, kills: int) -> None:
    out, report, steps = chaos["out"], chaos["summary"], steps_for(kills)
    assert chaos["result"].steps == steps
    assert steps_logged(out) == list(range(1, steps + 1))
    assert report["kills"] == report["survived"] == kills
    events = [f["event"] for f in read_faults(out)]
    assert events.count("chaos_kill") == events.count("chaos_recovered") == kills
    # Each kill of a rank that holds training state restarted the run; each dead engine was replaced.
    trained = sum(1 for role in report["by_role"] if role.split(":")[0] in ("policy", "value"))
    assert events.count("restart") == trained
    assert events.count("engine_replaced") == sum(1 for role in report["by_role"] if role.startswith("rollout"))
    final_checkpoint_loads(chaos["cfg"], out / "checkpoints" / f"step_{steps:06d}", steps)


def final_checkpoint_loads(cfg, checkpoint, steps: int) -> None:
    """The policy's ZeRO checkpoint gathers into a full state dict that the model takes, every key matching."""
    import json

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM

    assert json.loads((checkpoint / "state.json").read_text())["step"] == steps
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / "policy"), tag="zero")
    model = AutoModelForCausalLM.from_pretrained(cfg.model.path)
    base = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # a tied head is saved once, as the embedding
    assert any(not (tensor == base[name]).all() for name, tensor in model.state_dict().items())  # trained weights
    assert read_jsonl(checkpoint.parent.parent / "metrics.jsonl")[-1]["step"] == steps


def test_two_random_kills_are_survived(ray_session, tmp_path):
    check_survived(chaos_run(tmp_path, seed=3, kills=2), kills=2)


@pytest.mark.slow
def test_five_random_kills_are_survived(ray_session, tmp_path):
    check_survived(chaos_run(tmp_path, seed=37, kills=5), kills=5)  # seed 37 hits four kinds of role
