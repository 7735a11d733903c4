"""KL between the policy and the frozen reference: per-token estimators, the KL-penalised reward,
the KL-as-loss term, and controllers that choose the coefficient over training.

Estimators (Schulman, "Approximating KL Divergence", 2020) take per-token log-probs of the sampled
tokens under the policy (logp) and the reference (ref_logp); with tokens sampled from the policy each
estimates KL(policy ‖ reference):
  k1 = logp − ref_logp                          unbiased, can be negative per token
  k2 = ½ (logp − ref_logp)²                     biased, ≥ 0, low variance
  k3 = exp(ref − logp) − (ref − logp) − 1       unbiased, ≥ 0 (since eˣ ≥ 1 + x)
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Callable, Protocol, Sequence

import torch

from actors.algo.masked import masked_mean
from actors.algo.registry import Registry

KL_ESTIMATORS: Registry[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = Registry("kl estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate, same shape as logp (unmasked: padding gets whatever its inputs give)."""
    return KL_ESTIMATORS.get(estimator)(logp, ref_logp)


def last_token_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index [B] of the last set position of each row, has_any [B]); index is -1 for empty rows."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).amax(dim=-1)
    return last, last >= 0


def last_token_onehot(mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, T], True only at the last set position of each row (all False for empty rows)."""
    last, _ = last_token_index(mask)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return positions.unsqueeze(0) == last.unsqueeze(-1)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: −coef·KL on every response token, plus the sequence score on the last one.

    scores [B]; logp, ref_logp, mask [B, T] (mask marks response tokens; left or right padding both
    work). Returns (token_rewards [B, T], kl [B, T]), both 0 where mask is 0. A row with no response
    token receives neither penalty nor score.
    """
    selected = mask.bool()
    kl = torch.where(selected, kl_per_token(logp, ref_logp, estimator), torch.zeros_like(logp))
    score_at_end = torch.where(
        last_token_onehot(mask), scores.to(logp.dtype).unsqueeze(-1), torch.zeros_like(logp)
    )
    return -coef * kl + score_at_end, kl


def kl_loss_term(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    coef: float,
    estimator: str = "k3",
    normalizer: float | None = None,
) -> torch.Tensor:
    """coef × masked mean of the per-token KL: KL as a loss term (GRPO) instead of a reward penalty.

    k3 is the default because it is unbiased and non-negative, and its gradient pulls logp towards
    ref_logp from either side. normalizer: see masked_mean (shard-sum equals whole-batch loss).
    """
    return coef * masked_mean(kl_per_token(logp, ref_logp, estimator), mask, normalizer=normalizer)


class KLController(Protocol):
    """Chooses the KL coefficient. progress = step / total_steps in [0, 1]."""

    def value(self, progress: float) -> float: ...

    def update(self, observed_kl: float, n_samples: int) -> None: ...


class FixedKL:
    """The same coefficient for the whole run."""

    def __init__(self, coef: float) -> None:
        if coef < 0:
            raise ValueError(f"KL coef must be >= 0, got {coef}")
        self.coef = float(coef)

    def value(self, progress: float) -> float:
        return self.coef

    def update(self, observed_kl: float, n_samples: int) -> None:
        """Nothing to adapt."""


class AdaptiveKL:
    """Steers the coefficient so the observed KL tracks a target (Ziegler et al. 2019, §2.2).

    Each update: e = clip(observed / target − 1, −0.2, 0.2); coef ×= 1 + e · n_samples / horizon.
    The clip bounds how fast one noisy batch can move the coefficient; horizon (in samples) sets the
    time scale. `coef` is the current value (save it with a checkpoint to resume).
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if init_coef < 0:
            raise ValueError(f"KL init_coef must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"KL horizon must be > 0, got {horizon}")
        self.coef = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def value(self, progress: float) -> float:
        return self.coef

    def update(self, observed_kl: float, n_samples: int) -> None:
        proportional_error = min(max(observed_kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + proportional_error * n_samples / self.horizon


class ScheduledKL:
    """Piecewise-constant coefficient over training progress.

    schedule: [[progress_end, coef], ...] with strictly increasing ends, the last one 1.0. Each piece
    covers [previous end, its end): the left edge is inclusive and the right exclusive, so a boundary
    belongs to the next piece. Progress at or past the last end keeps the last coefficient; progress
    below 0 gets the first. SPEC default [[0.2, 0.08], [0.8, 0.05], [1.0, 0.06]]:
    0.08 for p < 0.2, 0.05 for 0.2 ≤ p < 0.8, 0.06 for p ≥ 0.8.
    """

    def __init__(self, schedule: Sequence[Sequence[float]]) -> None:
        self.ends, self.coefs = _validated_schedule(schedule)

    def value(self, progress: float) -> float:
        piece = min(bisect_right(self.ends, progress), len(self.coefs) - 1)
        return self.coefs[piece]

    def update(self, observed_kl: float, n_samples: int) -> None:
        """The schedule is fixed in advance."""


def _validated_schedule(schedule: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    if not schedule:
        raise ValueError("KL schedule is empty; give [[progress_end, coef], ...]")
    if any(len(piece) != 2 for piece in schedule):
        raise ValueError(f"KL schedule pieces must be [progress_end, coef] pairs, got {schedule}")
    ends = [float(end) for end, _ in schedule]
    coefs = [float(coef) for _, coef in schedule]
    if any(later <= earlier for earlier, later in zip(ends, ends[1:])) or ends[0] <= 0:
        raise ValueError(f"KL schedule progress ends must be > 0 and strictly increasing, got {ends}")
    if ends[-1] != 1.0:
        raise ValueError(f"KL schedule must end at progress 1.0, got {ends[-1]}")
    if any(coef < 0 for coef in coefs):
        raise ValueError(f"KL schedule coefficients must be >= 0, got {coefs}")
    return ends, coefs


KL_CONTROLLERS: Registry[Callable[..., KLController]] = Registry("kl controller")


@KL_CONTROLLERS.register("fixed")
def _fixed(*, coef: float, **_: object) -> KLController:
    return FixedKL(coef)


@KL_CONTROLLERS.register("adaptive")
def _adaptive(*, coef: float, target: float | None, horizon: float | None, **_: object) -> KLController:
    if target is None or horizon is None:
        raise ValueError("the adaptive KL controller needs target and horizon")
    return AdaptiveKL(coef, target, horizon)


@KL_CONTROLLERS.register("scheduled")
def _scheduled(*, schedule: Sequence[Sequence[float]] | None, **_: object) -> KLController:
    if schedule is None:
        raise ValueError("the scheduled KL controller needs a schedule")
    return ScheduledKL(schedule)


def make_kl_controller(
    name: str,
    *,
    coef: float = 0.05,
    schedule: Sequence[Sequence[float]] | None = None,
    target: float | None = None,
    horizon: float | None = None,
) -> KLController:
    """Build the controller registered under name ("fixed", "adaptive", "scheduled").

    coef is the fixed coefficient or the adaptive starting value; each controller ignores the options
    it does not use.
    """
    return KL_CONTROLLERS.get(name)(coef=coef, schedule=schedule, target=target, horizon=horizon)
