"""The shape of a PPO step without Ray: the phase table drives the step and names its timings, and phase 5
(advantages) is a pure function of the step's tensors, checked here by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actors.ppo_advantages import compute_advantages
from actors.ppo_loop import PHASES, PPOLoop
from actors.algo.kl import ScheduledKL
from actors.ppo_step import LogProbs, Rollout, Scores, StepState, progress_before
from actors.protocol import TokenBatch
from common.config import load_config


def test_the_phase_table_lists_the_phases_in_order_and_each_fills_its_own_field():
    names = [name for name, _ in PHASES]
    assert names == ["rollout", "score", "dynamic", "reference", "values", "advantages", "train", "sync", "monitor"]
    fields = [f.name for f in dataclasses.fields(StepState)]
    assert fields[fields.index("rollout"):] == names  # one result field per phase, in the same order
    assert all(phase is getattr(PPOLoop, f"{name}_phase") for name, phase in PHASES)


def test_the_kl_schedule_gives_each_piece_its_share_of_the_steps():
    """The SPEC's schedule (0.08 for the first 20% of training, 0.05 for the middle 60%, 0.06 for the last 20%) read
    at each step's progress: 2 / 6 / 2 of 10 steps, 1 / 3 / 1 of 5 (the first step's progress is 0)."""
    schedule = ScheduledKL(load_config(None).ppo.kl.schedule)
    assert [schedule.value(progress_before(step, 10)) for step in range(1, 11)] == [0.08] * 2 + [0.05] * 6 + [0.06] * 2
    assert [schedule.value(progress_before(step, 5)) for step in range(1, 6)] == [0.08] + [0.05] * 3 + [0.06]


def test_grpo_advantages_of_a_step_are_each_answer_against_its_group_by_hand():
    """Two prompts × two answers, preference term only, KL penalty off: each answer's advantage is
    (R − group mean) / (group std (unbiased) + 1e-4) on every one of its tokens and 0 elsewhere."""
    cfg = load_config(None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=2", "ppo.rollout_batch_size=2",
                             "ppo.mini_batch_size=2", "ppo.reward.enabled_terms=[rm]", "ppo.reward.rm_weight=1.0"])
    tokens = TokenBatch.from_samples([[1, 2], [1, 2], [3], [3]], [[5, 6, 7], [5], [8, 9], [9]], pad_id=0)
    zeros = torch.zeros_like(tokens.action_mask)
    rollout = Rollout([[]] * 4, ["0", "0", "1", "1"], ["a", "b", "c", "d"], tokens, zeros, 7, 1.0)
    scores = torch.tensor([3.0, 1.0, 0.5, 2.5])
    adv = compute_advantages(cfg.ppo, rollout, Scores(scores), LogProbs(zeros, zeros, zeros), zeros, kl_coef=0.05)
    # Group (3, 1): mean 2, std sqrt(2) → ±1/(sqrt(2) + 1e-4); group (0.5, 2.5): mean 1.5, the same spread.
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0]) / (2 ** 0.5 + 1e-4)
    mask = tokens.action_mask.bool()
    for row in range(4):
        assert torch.allclose(adv.advantages[row][mask[row]], expected[row].expand(int(mask[row].sum())), rtol=1e-6)
        assert torch.all(adv.advantages[row][~mask[row]] == 0)
    assert adv.reward_metrics["advantage/zero_spread_groups"] == 0.0
    assert adv.seq_kl.tolist() == [0.0] * 4 and adv.kl_coef == 0.05


def test_grpo_adds_the_kl_penalty_still_to_come_after_normalising_the_task_reward_by_hand():
    """KL in the reward: two answers that tie on the task (rm 1 and 1) but not on the KL teach nothing about the
    task (zero spread, group part 0), and each token carries its answer's penalty still to come, coefficient as
    set: 0.5 x (0.2 + 0.1) and 0.5 x 0.1 on the first answer. Normalised inside the return, those KL sums would
    have been divided by the group's spread of 0.15 / sqrt(2): about ±0.71 for each answer whatever the
    coefficient."""
    cfg = load_config(None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=2", "ppo.rollout_batch_size=1",
                             "ppo.mini_batch_size=2", "ppo.reward.enabled_terms=[rm,kl]", "ppo.reward.rm_weight=1.0",
                             "ppo.kl.mode=reward"])
    tokens = TokenBatch.from_samples([[1], [1]], [[4, 5], [6, 7]], pad_id=0)
    mask = tokens.action_mask.bool()
    zeros = torch.zeros_like(tokens.action_mask, dtype=torch.float32)
    kl_old = zeros.clone()
    kl_old[0, mask[0]] = torch.tensor([0.2, 0.1])  # k1 = log pi - log pi_ref, with the reference's at 0
    rollout = Rollout([[]] * 2, ["0", "0"], ["a", "b"], tokens, zeros, 4, 1.0)
    adv = compute_advantages(cfg.ppo, rollout, Scores(torch.tensor([1.0, 1.0])), LogProbs(zeros, zeros, kl_old),
                             zeros, kl_coef=0.5)
    assert adv.advantages[mask].tolist() == pytest.approx([-0.15, -0.05, 0.0, 0.0], abs=1e-7)
    assert adv.returns[mask].tolist() == pytest.approx([0.85, 0.95, 1.0, 1.0], abs=1e-7)
    assert adv.reward_metrics["advantage/zero_spread_groups"] == 1.0
    assert torch.all(adv.advantages[~mask] == 0)


def test_a_plug_in_reward_term_is_weighted_into_the_return_and_logged_raw_and_weighted():
    cfg = load_config(None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=2", "ppo.rollout_batch_size=1",
                             "ppo.mini_batch_size=2", "ppo.reward.enabled_terms=[rm]", "ppo.reward.rm_weight=1.0",
                             "ppo.reward.functions=[{callable: 'actors.reward_library:mentions_answer', "
                             "name: named, weight: 2.0}]"])
    tokens = TokenBatch.from_samples([[1], [1]], [[4, 5], [6, 7]], pad_id=0)
    zeros = torch.zeros_like(tokens.action_mask)
    rollout = Rollout([[]] * 2, ["0", "0"], ["a", "b"], tokens, zeros, 4, 1.0)
    scores = Scores(torch.tensor([1.0, 1.0]), {"named": torch.tensor([1.0, 0.0])})
    adv = compute_advantages(cfg.ppo, rollout, scores, LogProbs(zeros, zeros, zeros), zeros, 0.05)
    # Returns: rm 1 + 2 × named → 3 and 1, so the group's advantages are ±(3 − 2) / (sqrt(2) + 1e-4).
    assert adv.returns[tokens.action_mask.bool()].tolist() == [3.0, 3.0, 1.0, 1.0]
    assert adv.reward_metrics["reward/named"] == 0.5 and adv.reward_metrics["reward/named_weighted"] == 1.0
    assert adv.advantages[0, 0].item() == pytest.approx(1 / (2 ** 0.5 + 1e-4), rel=1e-6)


def test_an_answer_cut_at_the_token_limit_pays_the_missing_eos_penalty_from_its_sample():
    """ppo.reward.missing_eos_penalty reads each row's finish reason from the engines' samples: the answer that
    stopped at max_new_tokens ("length") returns rm 1 − 0.25, the one that ended itself rm 1."""
    from actors.rollout.sample import Sample

    cfg = load_config(None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=2", "ppo.rollout_batch_size=1",
                             "ppo.mini_batch_size=2", "ppo.reward.enabled_terms=[rm]", "ppo.reward.rm_weight=1.0",
                             "ppo.reward.missing_eos_penalty=0.25"])
    tokens = TokenBatch.from_samples([[1], [1]], [[4, 5], [6, 7]], pad_id=0)
    zeros = torch.zeros_like(tokens.action_mask)
    samples = [Sample([1], [4, 5], [0.0, 0.0], "stop"), Sample([1], [6, 7], [0.0, 0.0], "length")]
    rollout = Rollout([[]] * 2, ["0", "0"], ["a", "b"], tokens, zeros, 4, 0.5, samples=samples)
    adv = compute_advantages(cfg.ppo, rollout, Scores(torch.tensor([1.0, 1.0])), LogProbs(zeros, zeros, zeros),
                             zeros, 0.05)
    assert adv.returns[tokens.action_mask.bool()].tolist() == [1.0, 1.0, 0.75, 0.75]
    assert adv.reward_metrics["reward/missing_eos"] == -0.125


def test_gae_needs_the_value_model_and_whitens_over_the_batch():
    cfg = load_config(None, ["ppo.reward.enabled_terms=[rm]", "ppo.reward.rm_weight=1.0", "ppo.lam=1.0"])
    tokens = TokenBatch.from_samples([[1], [1]], [[4, 5], [6, 7]], pad_id=0)
    zeros = torch.zeros_like(tokens.action_mask)
    rollout = Rollout([[]] * 2, ["0", "1"], ["a", "b"], tokens, zeros, 4, 1.0)
    adv = compute_advantages(cfg.ppo, rollout, Scores(torch.tensor([1.0, 3.0])), LogProbs(zeros, zeros, zeros),
                             zeros, 0.05)
    mask = tokens.action_mask.bool()
    # λ = γ = 1 and zero values: every token's return is its response's score. Whitened over the 4 response
    # tokens: mean 2, unbiased variance 4/3, so (1 − 2) / sqrt(4/3) = −sqrt(3)/2 and (3 − 2) / sqrt(4/3) =
    # sqrt(3)/2.
    assert adv.returns[mask].tolist() == [1.0, 1.0, 3.0, 3.0]
    half_root3 = 3 ** 0.5 / 2
    assert adv.advantages[mask].tolist() == pytest.approx([-half_root3] * 2 + [half_root3] * 2, rel=1e-6)


def test_each_role_gets_the_cores_its_busiest_phase_leaves_it_and_a_fixed_count_wins():
    from actors.ppo_roles import thread_plans

    gae = thread_plans(load_config(None))  # policy, value and reference: one rank each
    # Phase 3: policy and reference at once; phase 4: the value model alone; phase 6: policy and value at once.
    assert [gae["policy"].threads(m, cores=8) for m in ("old_logprobs", "train")] == [4, 4]
    assert [gae["value"].threads(m, cores=8) for m in ("values", "train")] == [8, 4]
    assert gae["reference"].threads("logprobs", cores=8) == 4
    grpo = thread_plans(load_config(None, ["ppo.advantage_estimator=grpo", "ppo.samples_per_prompt=2",
                                           "ppo.policy_workers=2", "ppo.role_threads={reference: 3}"]))
    assert grpo["policy"].threads("train", cores=8) == 4  # two policy ranks and no value model
    assert grpo["policy"].threads("old_logprobs", cores=2) == 1  # never fewer than one
    assert grpo["reference"].threads("logprobs", cores=8) == 3
    # Overlapped rollouts: the engine samples beside every phase, so it counts in each phase's share.
    overlapped = thread_plans(load_config(None, ["ppo.async_rollouts=1"]))
    assert [overlapped["policy"].threads(m, cores=12) for m in ("old_logprobs", "train")] == [4, 4]
    assert overlapped["value"].threads("values", cores=12) == 6
    # The engines sample alone in phase 1 (and load alone in phase 7); overlapped, beside every other rank.
    two_engines = thread_plans(load_config(None, ["ppo.rollout.num_engines=2"]))
    assert [two_engines["rollout"].threads(m, cores=8) for m in ("generate", "load_weights")] == [4, 4]
    # Policy, value, reference and the engine all busy at once: 12 cores over 4 ranks.
    assert overlapped["rollout"].threads("generate", cores=12) == 3


def test_role_threads_names_only_known_roles():
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="role_threads takes positive thread counts for"):
        load_config(None, ["ppo.role_threads={critic: 2}"])
    with pytest.raises(ConfigError, match="role_threads"):
        load_config(None, ["ppo.role_threads={policy: 0}"])


def test_the_sampler_gap_counts_the_newer_policys_cuts_apart_and_stays_finite():
    """A batch sampled one update behind keeps −inf where the updated π_old cuts a token (fill_dropped's rows):
    rollout/drift_cut_share counts it (1 of 4 response tokens) and the mismatch is taken over the other three,
    which here agree exactly, instead of an infinite k3."""
    from actors.ppo_metrics import sampler_gap

    tokens = TokenBatch.from_samples([[1], [1]], [[4, 5], [6, 7]], pad_id=0)
    mask = tokens.action_mask.bool()
    behaviour = torch.zeros_like(tokens.action_mask, dtype=torch.float32)
    behaviour[mask] = torch.tensor([-0.5, -1.0, -2.0, -0.3])
    old = behaviour.clone()
    old[1, mask[1].nonzero()[0]] = float("-inf")
    rollout = Rollout([[]] * 2, ["0", "0"], ["a", "b"], tokens, behaviour, 4, 1.0)
    state = StepState(2, 0.5, rollout=rollout, reference=LogProbs(old, behaviour, behaviour))
    gap = sampler_gap(state)
    assert gap["rollout/drift_cut_share"] == 0.25
    assert gap["rollout/behaviour_kl"] == 0.0 and gap["rollout/ratio_mean"] == 1.0


def test_the_rows_pi_old_may_fill_are_those_the_current_weights_sampled():
    """reference_phase fills the trainer's top-p edge tokens only in rows the weights it holds sampled (lock-step:
    every row of the engines' version); a batch sampled one update behind, or a dynamic-sampling batch mixing the
    two, keeps the newer policy's cut in the older rows; unknown versions fill every row."""
    tokens = TokenBatch.from_samples([[1]] * 3, [[4], [5], [6]], pad_id=0)
    zeros = torch.zeros_like(tokens.action_mask, dtype=torch.float32)

    def rows(versions):
        return Rollout([[]] * 3, ["0"] * 3, ["a"] * 3, tokens, zeros, 3, 1.0, versions=versions)

    assert rows([4, 4, 4]).sampled_by(4).tolist() == [True, True, True]
    assert rows([3, 3, 3]).sampled_by(4).tolist() == [False, False, False]
    assert rows([3, 4, 4]).sampled_by(4).tolist() == [False, True, True]
    assert rows([]).sampled_by(4) is None
