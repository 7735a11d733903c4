"""Training-health monitors for PPO (SPEC §4 failure modes): each has a metric, a threshold and an action.

  mode collapse    distinct-1 / distinct-2 of the batch's responses, mean pairwise similarity of responses to
                   the same prompt, mean per-token policy entropy: alarm when diversity falls below (or
                   similarity rises above) its threshold.
  instability      NaN/Inf in any metric; loss (either direction) and grad-norm (upwards) spikes by robust
                   z-score (median/MAD of a sliding window); KL above a bound.
  reward hacking   the reward-model score trends up over a window while a reward-model-independent signal
                   trends the wrong way: the held-out gold reward falls when it is logged; otherwise
                   filler/jargon density rises, or the mean response length grows.

Actions, in increasing severity (ACTIONS): "warn"; "raise_kl" (multiply the KL controller's coefficient by
kl_raise_factor); "rollback" (restore the checkpoint of the last healthy step and multiply the policy lr by
rollback_lr_factor); "stop". The engine feeds HealthMonitor.observe one step at a time, writes every Alarm
to the metrics log, and applies most_severe_action(alarms).

Metric keys observe() reads from the step's metrics dict (missing keys skip their checks):
  "loss" policy loss, "grad_norm" pre-clip gradient norm, "kl" mean per-sequence KL (nats), "entropy" mean
  per-token entropy (nats), "rm_reward" mean reward-model score, "gold_reward" held-out gold reward (optional).
Every other float in the dict is still checked for NaN/Inf.

Pure Python (stdlib + actors.algo.response_stats): no torch needed for scalars.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Protocol, Sequence

from actors.algo.response_stats import (DISTINCT_1, DISTINCT_2, FILLER_DENSITY, MEAN_CHARS, PAIRWISE_SIMILARITY,
                                        phrase_tokens, response_metrics)

ACTIONS = ("warn", "raise_kl", "rollback", "stop")

LOSS = "loss"
GRAD_NORM = "grad_norm"
KL = "kl"
ENTROPY = "entropy"
RM_REWARD = "rm_reward"
GOLD_REWARD = "gold_reward"

# 1.4826 × MAD estimates σ for Gaussian data; 1.2533 × mean absolute deviation is the fallback when over
# half the window is identical (MAD = 0), as in Iglewicz & Hoaglin's modified z-score.
MAD_TO_SIGMA = 1.4826
MEAN_AD_TO_SIGMA = 1.2533


class MonitorSettings(Protocol):
    """The fields of common.config.MonitorConfig the monitors read (duck-typed: algo imports only torch)."""

    window: int
    min_history: int
    spike_z: float
    max_kl: float
    min_distinct_1: float
    min_distinct_2: float
    max_pairwise_similarity: float
    min_entropy: float
    hacking_window: int
    hacking_min_trend: float
    hacking_min_filler_rise: float
    hacking_min_length_growth: float
    filler_phrases: Sequence[str]
    collapse_action: str
    spike_action: str
    nonfinite_action: str
    kl_explosion_action: str
    hacking_action: str
    raise_kl_cooldown: int
    max_rollbacks: int


@dataclass(frozen=True)
class Alarm:
    """One tripped threshold: at `step`, `monitor` saw `metric` = `value` against `threshold` → `action`."""

    step: int
    monitor: str
    metric: str
    value: float
    threshold: float
    action: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def most_severe_action(alarms: Iterable[Alarm]) -> str | None:
    """The most severe action among `alarms` (ACTIONS order), None when there are none."""
    ranks = [ACTIONS.index(alarm.action) for alarm in alarms]
    return ACTIONS[max(ranks)] if ranks else None


# ---------------------------------------------------------------------------------------------- statistics

def robust_z(value: float, history: Sequence[float]) -> float:
    """(value − median) / robust σ of `history`; σ from the MAD, or the mean absolute deviation when the MAD
    is 0. A perfectly constant history gives 0 for the same value and ±inf for any other."""
    median = statistics.median(history)
    deviations = [abs(x - median) for x in history]
    sigma = MAD_TO_SIGMA * statistics.median(deviations)
    if sigma == 0.0:
        sigma = MEAN_AD_TO_SIGMA * statistics.fmean(deviations)
    if sigma == 0.0:
        return 0.0 if value == median else math.copysign(math.inf, value - median)
    return (value - median) / sigma


def trend_strength(values: Sequence[float]) -> float:
    """Pearson correlation of `values` with their index, in [−1, 1]: the least-squares slope of the
    standardised series. +1 a steady rise, −1 a steady fall, 0 flat or no trend (including constant input)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_t, mean_v = (n - 1) / 2, statistics.fmean(values)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in enumerate(values))
    var_t = sum((t - mean_t) ** 2 for t in range(n))
    var_v = sum((v - mean_v) ** 2 for v in values)
    return 0.0 if var_v == 0.0 else cov / math.sqrt(var_t * var_v)


def fitted_line(values: Sequence[float]) -> tuple[float, float]:
    """(start, end) of the least-squares line through `values` against their index."""
    n = len(values)
    mean_t, mean_v = (n - 1) / 2, statistics.fmean(values)
    var_t = sum((t - mean_t) ** 2 for t in range(n))
    slope = sum((t - mean_t) * (v - mean_v) for t, v in enumerate(values)) / var_t if var_t else 0.0
    start = mean_v - slope * mean_t
    return start, start + slope * (n - 1)


# ------------------------------------------------------------------------------------------------ monitor

class SeriesHistory:
    """The last `size` finite values of one metric, each with its step (so a rollback can drop later ones)."""

    def __init__(self, size: int) -> None:
        self._entries: deque[tuple[int, float]] = deque(maxlen=size)

    def add(self, step: int, value: float) -> None:
        self._entries.append((step, value))

    def values(self) -> list[float]:
        return [value for _, value in self._entries]

    def is_full(self) -> bool:
        return len(self._entries) == self._entries.maxlen

    def drop_after(self, step: int) -> None:
        kept = [entry for entry in self._entries if entry[0] <= step]
        self._entries.clear()
        self._entries.extend(kept)

    def entries(self) -> list[list[float]]:
        return [[step, value] for step, value in self._entries]

    def load(self, entries: list[list[float]]) -> None:
        self._entries.clear()
        self._entries.extend((int(step), float(value)) for step, value in entries)


class HealthMonitor:
    """Fed one PPO step at a time; returns the alarms that step raised and remembers the last healthy step.

    A step is healthy when it raised no alarm at all. The engine should restore the newest checkpoint at or
    before `last_healthy_step` (rollback_target) and then call rolled_back_to(that step).
    """

    SPIKE_METRICS = {LOSS: True, GRAD_NORM: False}  # metric → two-sided? (a grad-norm drop is harmless)
    HACKING_SERIES = (RM_REWARD, GOLD_REWARD, FILLER_DENSITY, MEAN_CHARS)

    def __init__(self, cfg: MonitorSettings) -> None:
        self.cfg = cfg
        self.phrases = phrase_tokens(cfg.filler_phrases)
        self.last_healthy_step: int | None = None
        self.last_response_metrics: dict[str, float] = {}
        self.rollbacks = 0
        self._observations = 0
        self._raise_kl_at: dict[str, int] = {}  # monitor → observation index of its last raise_kl
        self._spike_history = {name: SeriesHistory(cfg.window) for name in self.SPIKE_METRICS}
        self._trend_history = {name: SeriesHistory(cfg.hacking_window) for name in self.HACKING_SERIES}

    def observe(self, step: int, metrics: Mapping[str, float],
                responses_by_prompt: Mapping[str, Sequence[str]] | None = None) -> list[Alarm]:
        """Check one step. metrics: scalar metrics by name (keys in the module docstring);
        responses_by_prompt: prompt → the responses sampled for it this step. Returns the alarms raised,
        actions already adjusted for cooldown and the rollback budget."""
        self.last_response_metrics = response_metrics(responses_by_prompt or {}, self.phrases)
        alarms = (self._nonfinite(step, metrics) + self._spikes(step, metrics) + self._kl_explosion(step, metrics)
                  + self._mode_collapse(step, metrics) + self._reward_hacking(step, metrics))
        alarms = self._apply_action_policy(alarms)
        self._observations += 1
        if not alarms:
            self.last_healthy_step = step
        return alarms

    def rollback_target(self, checkpoint_steps: Iterable[int]) -> int | None:
        """The newest of `checkpoint_steps` at or before the last healthy step (None: nothing to restore)."""
        if self.last_healthy_step is None:
            return None
        healthy = [s for s in checkpoint_steps if s <= self.last_healthy_step]
        return max(healthy) if healthy else None

    def state(self) -> dict:
        """What a resumed run needs to judge its next steps as this one would (JSON: it goes into the PPO
        checkpoint's state.json): the rollback budget spent, the last healthy step, the raise_kl cooldowns and
        the metric histories. A fresh monitor after a resume had a new budget and no target to roll back to."""
        return {"last_healthy_step": self.last_healthy_step, "rollbacks": self.rollbacks,
                "observations": self._observations, "raise_kl_at": dict(self._raise_kl_at),
                "spikes": {name: h.entries() for name, h in self._spike_history.items()},
                "trends": {name: h.entries() for name, h in self._trend_history.items()}}

    def restore(self, state: dict) -> None:
        self.last_healthy_step, self.rollbacks = state["last_healthy_step"], state["rollbacks"]
        self._observations, self._raise_kl_at = state["observations"], dict(state["raise_kl_at"])
        for saved, histories in ((state["spikes"], self._spike_history), (state["trends"], self._trend_history)):
            for name, entries in saved.items():
                if name in histories:
                    histories[name].load(entries)

    def rollback_impossible(self) -> None:
        """A rollback was asked for while checkpoints exist, none at or before the last healthy step: older ones
        are only ever pruned, so it can never happen. It spends the budget as a rollback would, so alarms that keep
        asking end in stop (one asked for before the first save spends nothing: a checkpoint may yet come)."""
        self.rollbacks += 1

    def rolled_back_to(self, step: int) -> None:
        """Forget what was observed after `step`, whose checkpoint the engine has restored; one rollback of the
        budget is spent."""
        self.rollbacks += 1
        for history in (*self._spike_history.values(), *self._trend_history.values()):
            history.drop_after(step)
        self.last_healthy_step = step

    # --- instability

    def _nonfinite(self, step: int, metrics: Mapping[str, float]) -> list[Alarm]:
        return [Alarm(step, "instability", name, float(value), math.inf, self.cfg.nonfinite_action,
                      f"{name} is {value} at step {step}")
                for name, value in metrics.items() if _is_number(value) and not math.isfinite(value)]

    def _spikes(self, step: int, metrics: Mapping[str, float]) -> list[Alarm]:
        alarms = []
        for name, two_sided in self.SPIKE_METRICS.items():
            value = metrics.get(name)
            if not _is_number(value) or not math.isfinite(value):
                continue
            history = self._spike_history[name]
            past = history.values()
            if len(past) >= self.cfg.min_history:
                z = robust_z(value, past)
                if (abs(z) if two_sided else z) > self.cfg.spike_z:
                    alarms.append(Alarm(step, "instability", name, float(value), self.cfg.spike_z,
                                        self.cfg.spike_action,
                                        f"{name} spike: {value:.4g} is {z:+.1f} robust sigmas from the median "
                                        f"{statistics.median(past):.4g} of the last {len(past)} steps"))
            history.add(step, float(value))
        return alarms

    def _kl_explosion(self, step: int, metrics: Mapping[str, float]) -> list[Alarm]:
        kl = metrics.get(KL)
        if not _is_number(kl) or not math.isfinite(kl) or kl <= self.cfg.max_kl:
            return []
        return [Alarm(step, "instability", KL, float(kl), self.cfg.max_kl, self.cfg.kl_explosion_action,
                      f"KL exploded: {kl:.4g} nats per sequence > {self.cfg.max_kl:g}")]

    # --- mode collapse

    def _mode_collapse(self, step: int, metrics: Mapping[str, float]) -> list[Alarm]:
        observed = dict(self.last_response_metrics)
        if _is_number(metrics.get(ENTROPY)):
            observed[ENTROPY] = metrics[ENTROPY]
        floors = {DISTINCT_1: self.cfg.min_distinct_1, DISTINCT_2: self.cfg.min_distinct_2,
                  ENTROPY: self.cfg.min_entropy}
        alarms = [self._collapse_alarm(step, name, observed[name], floor, "below")
                  for name, floor in floors.items() if name in observed and observed[name] < floor]
        similarity = observed.get(PAIRWISE_SIMILARITY)
        if similarity is not None and similarity > self.cfg.max_pairwise_similarity:
            alarms.append(self._collapse_alarm(step, PAIRWISE_SIMILARITY, similarity,
                                               self.cfg.max_pairwise_similarity, "above"))
        return alarms

    def _collapse_alarm(self, step: int, metric: str, value: float, threshold: float, side: str) -> Alarm:
        return Alarm(step, "mode_collapse", metric, float(value), threshold, self.cfg.collapse_action,
                     f"mode collapse: {metric} {value:.4g} is {side} {threshold:g}")

    # --- reward hacking

    def _reward_hacking(self, step: int, metrics: Mapping[str, float]) -> list[Alarm]:
        observed = {**self.last_response_metrics, **{k: metrics[k] for k in (RM_REWARD, GOLD_REWARD) if k in metrics}}
        for name in self.HACKING_SERIES:
            if _is_number(observed.get(name)) and math.isfinite(observed[name]):
                self._trend_history[name].add(step, float(observed[name]))
        rm = self._trend_history[RM_REWARD]
        if not rm.is_full():
            return []
        rm_trend = trend_strength(rm.values())
        if rm_trend < self.cfg.hacking_min_trend:
            return []
        # A logged gold reward is the authoritative independent signal: length or filler growth that the
        # gold reward also likes is a real gain, not hacking.
        if self._trend_history[GOLD_REWARD].is_full():
            finding = self._gold_falls()
        else:
            finding = self._filler_rises() or self._length_grows()
        if finding is None:
            return []
        metric, value, threshold, what = finding
        window = self.cfg.hacking_window
        return [Alarm(step, "reward_hacking", metric, value, threshold, self.cfg.hacking_action,
                      f"reward hacking: RM reward trend {rm_trend:+.2f} over the last {window} steps while {what}")]

    def _gold_falls(self) -> tuple[str, float, float, str] | None:
        trend = trend_strength(self._trend_history[GOLD_REWARD].values())
        if trend > -self.cfg.hacking_min_trend:
            return None
        return GOLD_REWARD, trend, -self.cfg.hacking_min_trend, f"the gold reward trend is {trend:+.2f}"

    def _filler_rises(self) -> tuple[str, float, float, str] | None:
        history = self._trend_history[FILLER_DENSITY]
        if not history.is_full():
            return None
        trend = trend_strength(history.values())
        start, end = fitted_line(history.values())
        if trend < self.cfg.hacking_min_trend or end - start < self.cfg.hacking_min_filler_rise:
            return None
        return (FILLER_DENSITY, trend, self.cfg.hacking_min_trend,
                f"filler/jargon density trend is {trend:+.2f} ({start:.3f} → {end:.3f})")

    def _length_grows(self) -> tuple[str, float, float, str] | None:
        history = self._trend_history[MEAN_CHARS]
        if not history.is_full():
            return None
        trend = trend_strength(history.values())
        start, end = fitted_line(history.values())
        growth = (end - start) / start if start > 0 else 0.0
        if trend < self.cfg.hacking_min_trend or growth < self.cfg.hacking_min_length_growth:
            return None
        return (MEAN_CHARS, trend, self.cfg.hacking_min_trend,
                f"mean response length trend is {trend:+.2f} ({start:.0f} → {end:.0f} chars, {growth:+.0%})")

    # --- actions

    def _apply_action_policy(self, alarms: list[Alarm]) -> list[Alarm]:
        """Downgrade raise_kl to warn inside a monitor's cooldown; turn rollback into stop once the rollback
        budget is spent. The budget counts rollbacks performed (rolled_back_to) or impossible for good
        (rollback_impossible), at most one per step: an alarm before the first save spends none."""
        adjusted = [self._cooled_down(alarm) for alarm in alarms]
        if any(alarm.action == "rollback" for alarm in adjusted) and self.rollbacks >= self.cfg.max_rollbacks:
            adjusted = [_with_action(a, "stop", f"rollback budget of {self.cfg.max_rollbacks} spent")
                        if a.action == "rollback" else a for a in adjusted]
        for alarm in adjusted:
            if alarm.action == "raise_kl":
                self._raise_kl_at[alarm.monitor] = self._observations
        return adjusted

    def _cooled_down(self, alarm: Alarm) -> Alarm:
        last = self._raise_kl_at.get(alarm.monitor)
        if alarm.action != "raise_kl" or last is None or self._observations - last > self.cfg.raise_kl_cooldown:
            return alarm
        return _with_action(alarm, "warn", f"KL already raised {self._observations - last} observation(s) ago")


def _with_action(alarm: Alarm, action: str, reason: str) -> Alarm:
    return Alarm(alarm.step, alarm.monitor, alarm.metric, alarm.value, alarm.threshold, action,
                 f"{alarm.message} [{alarm.action} → {action}: {reason}]")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
