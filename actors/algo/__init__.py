"""The algorithm core: pure functions on torch tensors, no Ray / vLLM / DeepSpeed / transformers.

House rule 1: this package imports only torch and the standard library, so it can be tested and
reused without a cluster (tests/unit/test_algo_imports.py enforces it).
"""

from actors.algo.advantages import ADVANTAGE_ESTIMATORS, gae, reinforce, rewards_to_go
from actors.algo.group_baselines import (
    GROUP_BASELINES,
    group_advantages,
    per_token,
    spread_groups,
    zero_spread_share,
)
from actors.algo.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKL,
    FixedKL,
    KLController,
    ScheduledKL,
    kl_loss_term,
    kl_penalized_rewards,
    kl_per_token,
    make_kl_controller,
)
from actors.algo.logprobs import entropy_from_logits, shift_for_causal_lm, token_logprobs
from actors.algo.loss_aggregation import LOSS_AGGREGATIONS, LossAggregation
from actors.algo.masked import masked_mean, masked_sum, masked_var, masked_whiten
from actors.algo.pass_at_k import mean_pass_at_k, pass_at_k
from actors.algo.policy_loss import POLICY_LOSSES, clipped_policy_loss
from actors.algo.preference import (
    DPO_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    pairwise_accuracy,
    sequence_logprob,
)
from actors.algo.registry import Registry
from actors.algo.rollout_correction import (
    ROLLOUT_CORRECTIONS,
    RolloutCorrection,
    behaviour_mismatch,
    behaviour_ratio,
)
from actors.algo.sampling import process_next_token_logits, processed_logprobs, processed_logprobs_at
from actors.algo.value_loss import clipped_value_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "DPO_LOSSES",
    "GROUP_BASELINES",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "ROLLOUT_CORRECTIONS",
    "AdaptiveKL",
    "FixedKL",
    "KLController",
    "LossAggregation",
    "Registry",
    "RolloutCorrection",
    "ScheduledKL",
    "behaviour_mismatch",
    "behaviour_ratio",
    "bradley_terry_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "dpo_loss",
    "entropy_from_logits",
    "gae",
    "group_advantages",
    "kl_loss_term",
    "kl_penalized_rewards",
    "kl_per_token",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mean_pass_at_k",
    "pairwise_accuracy",
    "pass_at_k",
    "per_token",
    "rewards_to_go",
    "process_next_token_logits",
    "processed_logprobs",
    "processed_logprobs_at",
    "reinforce",
    "sequence_logprob",
    "shift_for_causal_lm",
    "spread_groups",
    "token_logprobs",
    "zero_spread_share",
]
