"""PPO's mixed reward and its training-health monitors (ppo.reward, ppo.monitor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from common.configlib import param
from common.errors import ConfigError

MonitorAction = Literal["warn", "raise_kl", "rollback", "stop"]
DEFAULT_FILLER_PHRASES = [
    "in conclusion", "it is important to note", "it is worth noting", "as an ai", "delve", "leverage",
    "synergy", "paradigm shift", "holistic", "cutting-edge", "at the end of the day",
    "总而言之", "综上所述", "值得注意的是", "赋能", "抓手", "闭环", "底层逻辑",
]


RewardTermName = Literal["rm", "kl", "length", "repetition", "safety"]
BUILT_IN_TERMS = ("rm", "kl", "length", "repetition", "safety")
RESERVED_TERMS = (*BUILT_IN_TERMS, "missing_eos")  # missing_eos_penalty's charge is logged under that name


@dataclass(frozen=True)
class RewardFunctionConfig:
    """A reward term the user plugs in (actors/reward_functions.py)."""
    callable: str = param("", "'package.module:function' or 'path/to/file.py:function', called as fn(prompts, "
                              "responses, **columns, **kwargs) -> one number per response; prompts are each "
                              "record's chat turns, columns the prompt file's other fields (e.g. a reference "
                              "answer)")
    weight: float = param(1.0, "weight of the term in the mixed reward", ge=0.0)
    name: Optional[str] = param(None, "the term's name in the metrics (reward/<name>); unset: the function's name")
    kwargs: dict[str, Any] = param({}, "fixed keyword arguments passed on every call (e.g. a regex pattern)")
    success_at: Optional[float] = param(None, "a response scoring at least this counts as solved: with "
                                              "ppo.eval_samples > 1 the held-out evaluation logs pass@k for this "
                                              "term (unset: no pass@k; 1.0 for the shipped 0/1 checkers)")

    @property
    def term(self) -> str:
        return self.name or self.callable.rpartition(":")[2]

    def check(self) -> None:
        if ":" not in self.callable:
            raise ConfigError(f"callable must look like 'package.module:function' or 'path/to/file.py:function', "
                              f"got {self.callable!r}")


@dataclass(frozen=True)
class RewardMixConfig:
    """Mixed PPO reward (actors/algo/rewards.py): total = sum over enabled terms of <term>_weight x term."""
    rm_weight: float = param(0.6, "weight of the preference reward model score", ge=0.0)
    kl_weight: float = param(0.2, "weight of the KL penalty term, relative to the SPEC's 20% share: the per-token "
                                  "coefficient is (kl_weight / 0.2) x the KL controller's value, so the default "
                                  "applies the controller's 0.05 unchanged (see actors/algo/rewards.py)", ge=0.0)
    length_weight: float = param(0.05, "weight of the length penalty", ge=0.0)
    repetition_weight: float = param(0.05, "weight of the repetition penalty", ge=0.0)
    safety_weight: float = param(0.1, "weight of the safety term", ge=0.0)
    rm_normalize: bool = param(False, "whiten reward-model scores across the batch (zero mean, unit std) "
                                      "before weighting; off: the raw score")
    length_threshold_chars: int = param(500, "responses longer than this many characters are penalised "
                                             "(characters, so Chinese and English count alike)", gt=0)
    length_penalty: float = param(0.1, "penalty per 100 characters beyond the threshold", ge=0.0)
    repetition_ngram: int = param(3, "n of the repeated-n-gram fraction in the repetition penalty", gt=0)
    repetition_unique_share: float = param(0.5, "share of the repetition penalty taken from 1 - unique-token "
                                                "ratio; the rest is the repeated-n-gram fraction", ge=0.0, le=1.0)
    safe_bonus: float = param(0.1, "safety term when the lexicon verdict is clean (small bonus)", ge=0.0)
    unsafe_penalty: float = param(1.0, "safety term magnitude (negative) when the verdict is harmful; "
                                       "an ambiguous verdict scores 0", ge=0.0)
    safety_lexicon_dir: str = param("../shared/data/lexicons", "folder of harmful-word lists for the safety term")
    enabled_terms: list[RewardTermName] = param(["rm", "kl", "length", "repetition", "safety"],
                                                "reward terms switched on (add them one at a time)")
    rm_source: Literal["model", "http", "keyword", "filler"] = param(
        "model", "where the 'rm' score comes from: a reward-model actor (rm_path), the HTTP reward service "
                 "(reward_url), a programmatic keyword count (rm_keyword; for demos and learning tests), or a "
                 "deliberately hackable programmatic reward that pays for filler phrases (rm_filler_phrases; "
                 "for reward-hacking demos)")
    rm_path: Optional[str] = param(None, "reward model folder for rm_source=model (the pipeline fills in its "
                                         "trained reward model)")
    rm_keyword: str = param("happy", "rm_source=keyword: the score is the number of times this word occurs "
                                     "(whole words, case-insensitive), capped at rm_keyword_cap")
    rm_keyword_cap: int = param(5, "rm_source=keyword: highest score one response can earn", gt=0)
    rm_filler_phrases: list[str] = param(DEFAULT_FILLER_PHRASES, "rm_source=filler: the score is the number of "
                                                                 "response tokens inside these phrases")
    rm_filler_cap: int = param(10, "rm_source=filler: highest score one response can earn", gt=0)
    reward_url: Optional[str] = param(None, "score with the HTTP reward service at this URL instead of an actor")
    reward_timeout_s: float = param(30.0, "HTTP reward request timeout", gt=0)
    reward_retries: int = param(3, "HTTP reward retries with exponential backoff", ge=0)
    term_normalization: Literal["none", "batch", "group"] = param(
        "none", "normalise each term before weighting (normalise-then-sum, as TRL's multi_objective_aggregation="
                "normalize_then_sum): batch: (x - mean) / (std + 1e-4) over the step's responses; group: over the "
                "samples_per_prompt answers to each prompt (GDPO); none: the raw term. The KL term is never "
                "normalised: PPO charges it per token")
    term_clip: Optional[list[float]] = param(None, "[low, high]: clip every term (after normalisation) to this range "
                                                  "before weighting (unset: no clip; never the KL term)")
    total_clip: Optional[list[float]] = param(None, "[low, high]: clip the weighted sum of the terms PPO pays at the "
                                                   "end of a response (unset: no clip)")
    missing_eos_penalty: Optional[float] = param(
        None, "subtract this from what a response earns at its end when it stopped at rollout.max_new_tokens "
              "instead of ending itself (TRL's missing_eos_penalty; logged as reward/missing_eos): the reward model "
              "scores a cut answer as the chat template renders it, end-of-turn marker included, so without a "
              "penalty an answer that never ends can score as a finished one (unset: no penalty)", ge=0.0)
    functions: list[RewardFunctionConfig] = param(
        [], "plug-in reward terms beside the built-in ones, each {callable, weight, name, kwargs}; they run in a Ray "
            "worker, each term is logged raw (reward/<name>) and weighted and added to the mixed reward")
    function_timeout_s: float = param(60.0, "a reward function's call on one batch must return within this many "
                                            "seconds", gt=0)
    function_errors: Literal["fail", "zero"] = param(
        "fail", "a reward function that raises, or returns a wrong length, NaN or a non-number: fail the step with "
                "one line naming the function and the first bad record, or score the bad records 0 and count them "
                "(reward/<name>_errors)")

    def check(self) -> None:
        for key in ("term_clip", "total_clip"):
            bounds = getattr(self, key)
            if bounds is not None and (len(bounds) != 2 or not bounds[0] < bounds[1]):
                raise ConfigError(f"{key} must be [low, high] with low < high, got {bounds}")
        if self.rm_source == "http" and "rm" in self.enabled_terms and not self.reward_url:
            raise ConfigError("reward_url must be set when rm_source=http")
        if not self.enabled_terms and not self.functions:
            raise ConfigError("enabled_terms must name at least one reward term (or give reward functions)")
        names = [function.term for function in self.functions]
        clashing = sorted({name for name in names if names.count(name) > 1 or name in RESERVED_TERMS})
        if clashing:
            raise ConfigError(f"functions: term name(s) {clashing} repeat or clash with a built-in term "
                              f"{list(RESERVED_TERMS)}; give each function its own name")
        repeated = sorted({name for name in self.enabled_terms if self.enabled_terms.count(name) > 1})
        if repeated:
            raise ConfigError(f"enabled_terms lists {', '.join(repeated)} more than once")


@dataclass(frozen=True)
class MonitorConfig:
    """Training-health monitors (actors/algo/monitors.py): each failure mode has a metric, a threshold and an action."""
    enabled: bool = param(True, "run the monitors every PPO step")
    window: int = param(20, "steps of history behind the robust z-score (median/MAD) of loss and grad norm", gt=2)
    min_history: int = param(5, "steps observed before spike detection starts (a median of fewer points is noise)",
                             ge=3)
    spike_z: float = param(6.0, "robust z-score above which loss / grad norm count as a spike (Gaussian noise "
                                "passes 6 about once in 10^8 steps; the margin absorbs RL's heavy tails)", gt=0)
    max_kl: float = param(30.0, "mean per-sequence KL (nats) above which the KL has exploded (5x the adaptive "
                                "controller's default target of 6)", gt=0)
    min_distinct_1: float = param(0.1, "distinct-1 of a batch below this is mode collapse (identical responses "
                                       "score at most 1/batch; natural batches 0.3-0.5)", ge=0.0, le=1.0)
    min_distinct_2: float = param(0.2, "distinct-2 of a batch below this is mode collapse (natural batches "
                                       "score 0.6-0.9)", ge=0.0, le=1.0)
    max_pairwise_similarity: float = param(0.9, "mean Jaccard similarity of the 1-2-gram sets of responses to "
                                                "the same prompt (with one answer per prompt: of neighbouring "
                                                "answers) above this is mode collapse (identical = 1; sampled at "
                                                "temperature 0.7, well under 0.5)", gt=0.0, le=1.0)
    min_entropy: float = param(0.3, "mean per-token policy entropy (nats) below this is mode collapse (a sampling "
                                    "LM sits at 1-3 nats)", ge=0.0)
    hacking_window: int = param(10, "steps over which reward-model and independent-signal trends are compared",
                                gt=2)
    hacking_min_trend: float = param(0.6, "|correlation with step| that counts as a trend (r=0.6 over 10 steps: "
                                          "one-sided p~0.03 for noise, so both at once is ~0.001)", gt=0.0, le=1.0)
    hacking_min_filler_rise: float = param(0.02, "filler/jargon density must also rise by at least this much "
                                                 "over the window (2 more filler tokens per 100)", ge=0.0)
    hacking_min_length_growth: float = param(0.2, "mean response length must also grow by at least this share "
                                                  "over the window to count as length hacking", ge=0.0)
    gold_reward: Optional[str] = param(None, "the name of a ppo.reward.functions term read as the gold reward, the "
                                             "signal independent of the reward model (give it weight 0 to log it "
                                             "without training on it): the RM score trending up while it trends "
                                             "down is reward hacking (unset: filler density and length growth stand "
                                             "in for it)")
    filler_phrases: list[str] = param(DEFAULT_FILLER_PHRASES, "filler / jargon phrases whose density is the "
                                                              "reward-model-independent quality signal "
                                                              "(English and Chinese)")
    collapse_action: MonitorAction = param("raise_kl", "action on mode collapse (a higher KL pulls the policy "
                                                       "back towards the diverse reference)")
    spike_action: MonitorAction = param("rollback", "action on a loss or grad-norm spike")
    nonfinite_action: MonitorAction = param("rollback", "action on a NaN/Inf metric")
    kl_explosion_action: MonitorAction = param("raise_kl", "action when the KL exceeds max_kl")
    hacking_action: MonitorAction = param("raise_kl", "action on reward hacking (a higher KL limits how far "
                                                      "the policy can exploit the reward model)")
    kl_raise_factor: float = param(1.5, "raise_kl multiplies the KL coefficient by this", gt=1.0)
    raise_kl_cooldown: int = param(5, "observations after a raise_kl during which the same monitor only warns, "
                                      "so the higher coefficient has time to act", ge=0)
    rollback_lr_factor: float = param(0.5, "rollback multiplies the policy learning rate by this", gt=0.0, lt=1.0)
    max_rollbacks: int = param(3, "rollbacks allowed in a run; the next rollback alarm becomes stop", ge=0)

    def check(self) -> None:
        if self.min_history > self.window:
            raise ConfigError(f"min_history ({self.min_history}) must be <= window ({self.window})")
