"""Phase 5 of a PPO step, on the driver and free of Ray: the mixed reward (actors/algo/rewards.py), its per-token
KL penalty, then GAE with the value model's predictions or a group baseline over the answers to each prompt (the
KL penalty added after the group's normalisation), and whitening. Pure functions of the step's tensors, so the
whole phase can be checked without a cluster."""

from __future__ import annotations

import torch

from actors.algo import (ADVANTAGE_ESTIMATORS, group_advantages, kl_penalized_rewards, kl_per_token, masked_sum,
                         masked_whiten, per_token, rewards_to_go, zero_spread_share)
from actors.algo.rewards import MixedReward, RewardBatch, mix_rewards, reward_log
from actors.ppo_step import Advantages, LogProbs, Rollout, Scores
from common.config import PPOConfig


def compute_advantages(ppo: PPOConfig, rollout: Rollout, scores: Scores, logps: LogProbs, values: torch.Tensor,
                       kl_coef: float, safety_judge=None) -> Advantages:
    """Advantages and returns [B, L-1] of one step's responses; `kl_coef` is the controller's coefficient for this
    step, `safety_judge` the lexicon the safety term reads (None when that term is off)."""
    mask = rollout.tokens.action_mask
    seq_kl = masked_sum(kl_per_token(logps.kl_old, logps.ref, ppo.kl.per_token_estimator), mask, dim=-1)
    mixed = _mixed(ppo, rollout, scores, seq_kl, kl_coef, safety_judge)
    in_reward = ppo.kl.mode == "reward"
    penalty_coef = mixed.kl_coef_per_token if in_reward else 0.0
    token_rewards, token_kl = kl_penalized_rewards(mixed.terminal_reward, logps.kl_old, logps.ref, mask,
                                                   coef=penalty_coef, estimator=ppo.kl.per_token_estimator)
    group_metrics = {}
    if ppo.uses_value_model:
        advantages, returns = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards, values, mask, ppo.gamma, ppo.lam)
    else:
        # Each answer's task reward judged against the other answers to its prompt; the KL penalty (in the reward
        # mode) added after, unnormalised, as each token's penalty still to come (actors/algo/group_baselines.py).
        task = mixed.terminal_reward
        kl_to_go = rewards_to_go(-penalty_coef * token_kl, mask)
        advantages = per_token(group_advantages(task, ppo.samples_per_prompt, ppo.advantage_estimator), mask) \
            + kl_to_go
        returns = per_token(task, mask) + kl_to_go
        group_metrics["advantage/zero_spread_groups"] = zero_spread_share(task, ppo.samples_per_prompt)
    if ppo.whitens_advantages:
        advantages = masked_whiten(advantages, mask)
    seq_kl_k3 = float(masked_sum(kl_per_token(logps.kl_old, logps.ref, "k3"), mask, dim=-1).mean())
    return Advantages(advantages, returns, token_rewards, seq_kl, seq_kl_k3, kl_coef,
                      0.0 if in_reward else mixed.kl_coef_per_token, {**reward_log(mixed), **group_metrics})


def rewards_before_kl(ppo: PPOConfig, rollout: Rollout, scores: Scores, safety_judge=None) -> torch.Tensor:
    """[B] what each response earns at its end, the KL penalty aside: the reward whose spread within a group
    dynamic sampling looks at (the KL is not known before phase 3 and is no task signal)."""
    return _mixed(ppo, rollout, scores, torch.zeros(len(rollout.responses)), 0.0, safety_judge).terminal_reward


def _mixed(ppo: PPOConfig, rollout: Rollout, scores: Scores, seq_kl: torch.Tensor, kl_coef: float,
           safety_judge) -> MixedReward:
    weights = {function.term: function.weight for function in ppo.reward.functions}
    weights["env"] = ppo.environment.reward_weight  # the environment's reward (ppo.environment), when it has one
    extra = {name: (term, weights[name]) for name, term in scores.functions.items()}
    return mix_rewards(RewardBatch(rollout.responses, scores.rm, seq_kl, kl_coef=kl_coef, safety_judge=safety_judge,
                                   extra_terms=extra, group_size=ppo.samples_per_prompt,
                                   ended=rollout.ended_by_eos()), ppo.reward)
