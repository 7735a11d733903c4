"""What one PPO step logs (metrics.jsonl, TensorBoard): rewards by term, KL, lengths, the train phase's figures,
rollout speed and how far the ratio's π_old is from the distribution that sampled. Pure: read from the step's
typed results, so it needs no actor."""

from __future__ import annotations

import torch

from actors.algo import behaviour_mismatch
from actors.algo.sampling import finite_old
from actors.ppo_step import StepState


def step_metrics(s: StepState, kl_scale: float, lr: float) -> dict:
    rollout, adv = s.rollout, s.advantages
    mask = rollout.tokens.action_mask
    return {
        "reward/rm_mean": float(s.score.rm.mean()), "reward/rm_std": float(s.score.rm.std(unbiased=False)),
        **{f"reward/{name}_errors": count for name, count in s.score.errors.items()},
        **adv.reward_metrics, "kl": float(adv.seq_kl.mean()), "kl_coef": adv.kl_coef,
        "kl_scale": kl_scale, "kl_k3": adv.seq_kl_k3,
        "kl_per_token": float(adv.seq_kl.sum() / max(float(mask.sum()), 1.0)),
        "response_tokens_mean": float(mask.sum(-1).mean()),
        "response_chars_mean": sum(len(r) for r in rollout.responses) / len(rollout.responses),
        "finished_share": rollout.finished, **s.train,
        "rollout_tokens_per_s": rollout.generated_tokens / max(s.timings["rollout"], 1e-9),
        "lr": lr, **sampler_gap(s), **(s.dynamic.metrics() if s.dynamic else {}), **staleness(s),
        **rollout.env_metrics,
    }


def staleness(s: StepState) -> dict:
    """Updates between the policy that sampled each row and the one that trains on it (the policy of step
    s.step - 1): 0 in lock-step, 1 for a batch sampled during the previous step (ppo.async_rollouts)."""
    behind = [s.step - 1 - version for version in s.rollout.versions]
    return {"rollout/staleness": sum(behind) / len(behind), "rollout/staleness_max": max(behind)}


def sampler_gap(s: StepState) -> dict:
    """How far π_old is from the distribution that sampled (the engine's log-probs): the ratio's π_old, and the
    temperature-only one for comparison (the gap ppo.trainer_logprobs=processed closes)."""
    mask, behaviour = s.rollout.tokens.action_mask, s.rollout.behaviour
    # A row sampled one update behind keeps −inf where the newer π_old cuts the token (ratio 0, which the
    # rollout correction reads): counted on its own, and the mismatch taken over the other tokens.
    cut = mask.bool() & torch.isneginf(s.reference.old)
    old = finite_old(s.reference.old, behaviour, mask)  # finite everywhere, so a masked mean meets no 0 x inf
    gap = {f"rollout/{k}": float(v) for k, v in behaviour_mismatch(old, behaviour, mask * ~cut).items()}
    gap["rollout/drift_cut_share"] = float(cut.sum() / mask.bool().sum().clamp(min=1))
    plain = behaviour_mismatch(s.reference.kl_old, behaviour, mask)
    gap["rollout/behaviour_kl_temperature"] = float(plain["behaviour_kl"])
    gap["rollout/ratio_outside_share_temperature"] = float(plain["ratio_outside_share"])
    gap["rollout/nucleus_edge_share"] = s.reference.dropped_share
    return gap
