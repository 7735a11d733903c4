"""The mixed PPO reward (SPEC §4): named reward terms and their weighted sum.

Each term maps a RewardBatch of B responses to a CPU float32 tensor [B], one value per response:

  rm          the preference reward model's score; whitened across the batch only if rm_normalize is set
  length      −length_penalty × max(0, chars − length_threshold_chars) / 100; characters (code points), so a
              Chinese response is measured as fairly as an English one; exactly at the threshold → 0
  repetition  −[(1 − s)·repeated_ngram_fraction(n) + s·(1 − unique_token_ratio)], s = repetition_unique_share;
              both parts lie in [0, 1], so the term lies in [−1, 0] (0: nothing repeats; −1: one token looped)
  safety      +safe_bonus when the safety judge says "clean", −unsafe_penalty when "harmful", and 0 when
              "ambiguous": a hit on a word with a benign sense earns no bonus but is not punished as harmful
  kl          −kl_coef × seq_kl, seq_kl [B] the sum over response tokens of the per-token KL estimate

With missing_eos_penalty set, a response cut at the token limit (ended False) is also charged that penalty,
unweighted, never normalised and after total_clip, as TRL's missing_eos_penalty (logged as "missing_eos").

The mix is total = Σ over enabled terms of <term>_weight × term (SPEC weights rm 0.6, kl 0.2, length 0.05,
repetition 0.05, safety 0.1).

How the KL weight and coefficient combine, and what the PPO engine must do
--------------------------------------------------------------------------
The SPEC gives the KL term two numbers: a 20% share of the mix and a coefficient of −0.05, and warns that
a per-token coefficient of 0.01 drifts into gibberish while 0.2 learns nothing. Those warnings are about the
coefficient PPO actually applies per token, so at the SPEC defaults that coefficient must be 0.05, not
0.2 × 0.05. The KL term's weight is therefore read relative to its SPEC share:

  β = (kl_weight / SPEC_KL_WEIGHT) × kl_coef       SPEC_KL_WEIGHT = 0.2, kl_coef = the controller's value

so kl_weight 0.2 applies the controller's coefficient unchanged (0.08 → 0.05 → 0.06 over the SPEC
schedule), 0.4 doubles the KL pull and 0 switches it off, while the other weights act as plain multipliers.

KL is the one term PPO does not pay at the end of the sequence: it is charged token by token,
r_t = −β·kl_t, so the blame for drifting lands on the token that drifted. Summed over the response that is
exactly the weighted "kl" term (−β × seq_kl). So mix_rewards returns a MixedReward whose

  terminal_reward [B]   is the weighted sum of every enabled term EXCEPT kl: the engine puts it on the last
                        response token only;
  kl_coef_per_token     is β (0.0 when "kl" is not enabled): the engine's per-token penalty
                        (actors.algo.kl.kl_penalized_rewards, or kl_loss_term in KL-as-loss mode) uses THIS
                        coefficient;
  total [B]             is terminal_reward + the weighted kl term: what each sequence earns in all, for
                        logging and reports only; adding it to the token rewards would charge KL twice.

The monitors' "raise_kl" action multiplies the controller value, so it scales β too.

Per step the engine calls, once the reference log-probs (phase 3) have given seq_kl:
    mixed = mix_rewards(RewardBatch(responses, rm_scores, seq_kl, kl_coef=controller.value(progress),
                                    safety_judge=lexicon), cfg.ppo.reward)
    token_rewards, kl = kl_penalized_rewards(mixed.terminal_reward, logp, ref_logp, mask,
                                             coef=mixed.kl_coef_per_token)
and logs mixed.terms (raw), mixed.weighted_terms and mixed.total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from actors.algo.registry import Registry
from actors.algo.text import repeated_ngram_fraction, unique_token_ratio

KL_TERM = "kl"
MISSING_EOS_TERM = "missing_eos"  # missing_eos_penalty's charge, mixed in after the weighted terms
SAFETY_VERDICTS = ("clean", "ambiguous", "harmful")


class SafetyJudge(Protocol):
    """Anything that classifies a text as "clean", "ambiguous" or "harmful" (e.g. actors.algo.lexicon.Lexicon)."""

    def verdict(self, text: str) -> str: ...


class RewardSettings(Protocol):
    """The fields of common.config.RewardMixConfig the terms read (duck-typed: algo imports only torch)."""

    enabled_terms: Sequence[str]
    rm_weight: float
    kl_weight: float
    length_weight: float
    repetition_weight: float
    safety_weight: float
    rm_normalize: bool
    length_threshold_chars: int
    length_penalty: float
    repetition_ngram: int
    repetition_unique_share: float
    safe_bonus: float
    unsafe_penalty: float
    term_normalization: str
    term_clip: Sequence[float] | None
    total_clip: Sequence[float] | None
    missing_eos_penalty: float | None


@dataclass(frozen=True)
class RewardBatch:
    """What the reward terms see for one rollout batch of B responses.

    responses: B decoded response texts (prompt excluded).
    rm_scores: [B] preference reward-model scores; needed only when "rm" is enabled.
    seq_kl: [B] per-sequence KL, the sum of per-token KL estimates over response tokens; needed for "kl".
    kl_coef: the KL controller's current coefficient; needed for "kl".
    safety_judge: classifies each response; needed for "safety".
    extra_terms: name → ([B] scores, weight) of terms computed elsewhere (plug-in reward functions), mixed in
        beside the enabled built-in terms.
    group_size: answers per prompt, each prompt's contiguous in the batch; needed for term_normalization=group.
    ended: [B] bool, whether each response ended itself (EOS / end of turn) rather than being cut at the token
        limit; needed for missing_eos_penalty.
    """

    responses: list[str]
    rm_scores: torch.Tensor | None = None
    seq_kl: torch.Tensor | None = None
    kl_coef: float | None = None
    safety_judge: SafetyJudge | None = None
    extra_terms: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)
    group_size: int = 1
    ended: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shaped = {name: getattr(self, name) for name in ("rm_scores", "seq_kl", "ended")}
        shaped.update({f"extra_terms[{name!r}]": values for name, (values, _) in self.extra_terms.items()})
        for name, value in shaped.items():
            if value is not None and tuple(value.shape) != (len(self.responses),):
                raise ValueError(f"RewardBatch.{name} must have shape [{len(self.responses)}] (one per response), "
                                 f"got {list(value.shape)}")

    def required(self, name: str, term: str):
        """The field `name`, or a ValueError saying which enabled term needs it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"reward term {term!r} is enabled but RewardBatch.{name} was not given")
        return value


@dataclass(frozen=True)
class MixedReward:
    """mix_rewards' result; all tensors [B] float32 on CPU. See the module docstring for how to apply it."""

    terminal_reward: torch.Tensor
    kl_coef_per_token: float
    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    weighted_terms: dict[str, torch.Tensor] = field(default_factory=dict)


RewardTerm = Callable[[RewardBatch, RewardSettings], torch.Tensor]
REWARD_TERMS: Registry[RewardTerm] = Registry("reward term")


def _as_float32(values: torch.Tensor) -> torch.Tensor:
    # Rule-based terms are computed on the CPU from text; keep model scores there too so they mix.
    return values.detach().to(device="cpu", dtype=torch.float32)


def _per_response(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@REWARD_TERMS.register("rm")
def rm_term(batch: RewardBatch, cfg: RewardSettings) -> torch.Tensor:
    """The reward model's scores [B], whitened across the batch when cfg.rm_normalize (population std)."""
    scores = _as_float32(batch.required("rm_scores", "rm"))
    if not cfg.rm_normalize:
        return scores
    centered = scores - scores.mean()
    return centered / (centered.pow(2).mean().sqrt() + 1e-8)


@REWARD_TERMS.register("length")
def length_term(batch: RewardBatch, cfg: RewardSettings) -> torch.Tensor:
    """[B]: −length_penalty per 100 characters beyond length_threshold_chars; 0 at or under it."""
    excess = [max(0, len(text) - cfg.length_threshold_chars) for text in batch.responses]
    return _per_response([-cfg.length_penalty * chars / 100.0 for chars in excess])


def repetition_score(text: str, ngram: int, unique_share: float) -> float:
    """How repetitive `text` is, in [0, 1]: a blend of phrase loops (repeated n-grams) and word reuse.
    Punctuation counts as tokens here: a policy that learns to emit '””””' is looping too."""
    phrase_loops = repeated_ngram_fraction(text, ngram, symbols=True)
    word_reuse = 1.0 - unique_token_ratio(text, symbols=True)
    return (1.0 - unique_share) * phrase_loops + unique_share * word_reuse


@REWARD_TERMS.register("repetition")
def repetition_term(batch: RewardBatch, cfg: RewardSettings) -> torch.Tensor:
    """[B] in [−1, 0]: minus the repetition score of each response."""
    return _per_response([-repetition_score(text, cfg.repetition_ngram, cfg.repetition_unique_share)
                          for text in batch.responses])


def safety_value(verdict: str, safe_bonus: float, unsafe_penalty: float) -> float:
    """clean → +safe_bonus, ambiguous → 0, harmful → −unsafe_penalty."""
    values = {"clean": safe_bonus, "ambiguous": 0.0, "harmful": -unsafe_penalty}
    if verdict not in values:
        raise ValueError(f"safety verdict must be one of {list(SAFETY_VERDICTS)}, got {verdict!r}")
    return values[verdict]


@REWARD_TERMS.register("safety")
def safety_term(batch: RewardBatch, cfg: RewardSettings) -> torch.Tensor:
    """[B]: the safety judge's verdict on each response, mapped by safety_value."""
    judge = batch.required("safety_judge", "safety")
    return _per_response([safety_value(judge.verdict(text), cfg.safe_bonus, cfg.unsafe_penalty)
                          for text in batch.responses])


@REWARD_TERMS.register(KL_TERM)
def kl_term(batch: RewardBatch, cfg: RewardSettings) -> torch.Tensor:
    """[B]: −kl_coef × per-sequence KL. Reported and mixed into `total`; PPO charges it per token instead."""
    coef = batch.required("kl_coef", KL_TERM)
    return -coef * _as_float32(batch.required("seq_kl", KL_TERM))


# The KL term's share in the SPEC mix; at this weight the per-token coefficient is the controller's own.
SPEC_KL_WEIGHT = 0.2


def term_weight(cfg: RewardSettings, name: str) -> float:
    """The multiplier of term `name`: the config field <name>_weight, except KL's, read relative to its SPEC
    share (see the module docstring)."""
    weight = float(getattr(cfg, f"{name}_weight"))
    return weight / SPEC_KL_WEIGHT if name == KL_TERM else weight


def check_term_names(names: Sequence[str]) -> None:
    """ValueError naming the known terms if any of `names` is not a registered reward term."""
    for name in names:
        try:
            REWARD_TERMS.get(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None


NORMALIZE_EPS = 1e-4  # as TRL's normalize_then_sum: a term that is constant over the batch (or group) becomes 0


def normalized(values: torch.Tensor, how: str, group_size: int = 1) -> torch.Tensor:
    """(x − mean) / (std + 1e-4), std unbiased, over the whole batch (how="batch") or over each contiguous group
    of `group_size` answers to one prompt ("group"); "none" returns x. A single value has std 0."""
    if how == "none":
        return values
    grouped = values.view(-1, group_size) if how == "group" else values.view(1, -1)
    if how not in ("batch", "group"):
        raise ValueError(f"term normalization must be none, batch or group, got {how!r}")
    std = grouped.std(dim=1, keepdim=True) if grouped.shape[1] > 1 else torch.zeros_like(grouped[:, :1])
    return ((grouped - grouped.mean(dim=1, keepdim=True)) / (std + NORMALIZE_EPS)).reshape(-1)


def mix_rewards(batch: RewardBatch, cfg: RewardSettings) -> MixedReward:
    """Compute every enabled term, normalise and clip them as configured (never the KL term, which PPO charges
    per token), and mix them by weight; the weighted sum of the non-KL terms is clipped to total_clip. See the
    module docstring for the KL split."""
    check_term_names(cfg.enabled_terms)
    terms = {name: REWARD_TERMS.get(name)(batch, cfg) for name in cfg.enabled_terms}
    for name, (values, weight) in batch.extra_terms.items():
        if name in terms:
            raise ValueError(f"extra reward term {name!r} has the name of a built-in term")
        terms[name] = values
    weights = {name: term_weight(cfg, name) for name in cfg.enabled_terms}
    weights.update({name: weight for name, (_, weight) in batch.extra_terms.items()})
    weighted = {}
    for name, value in terms.items():
        if name != KL_TERM:
            value = normalized(value, cfg.term_normalization, batch.group_size)
            if cfg.term_clip is not None:
                value = value.clamp(*cfg.term_clip)
        weighted[name] = weights[name] * value
    terminal = torch.zeros(len(batch.responses), dtype=torch.float32)
    for name, value in weighted.items():
        if name != KL_TERM:
            terminal = terminal + value
    if cfg.total_clip is not None:
        terminal = terminal.clamp(*cfg.total_clip)
    if cfg.missing_eos_penalty:
        # As TRL's: a fixed charge, never normalised (a batch whose answers are all cut would pay nothing) nor
        # clipped away by total_clip.
        ended = batch.required("ended", MISSING_EOS_TERM).to(torch.bool)
        terms[MISSING_EOS_TERM] = weighted[MISSING_EOS_TERM] = -cfg.missing_eos_penalty * (~ended).float()
        terminal = terminal + weighted[MISSING_EOS_TERM]
    kl_enabled = KL_TERM in weighted
    return MixedReward(
        terminal_reward=terminal,
        kl_coef_per_token=term_weight(cfg, KL_TERM) * batch.kl_coef if kl_enabled else 0.0,
        total=terminal + weighted[KL_TERM] if kl_enabled else terminal.clone(),
        terms=terms,
        weighted_terms=weighted,
    )


def reward_log(mixed: MixedReward) -> dict[str, float]:
    """Batch means for the metrics log: reward/<term> (raw), reward/<term>_weighted, reward/terminal, reward/total."""
    row = {f"reward/{name}": value.mean().item() for name, value in mixed.terms.items()}
    row.update({f"reward/{name}_weighted": value.mean().item() for name, value in mixed.weighted_terms.items()})
    row["reward/terminal"] = mixed.terminal_reward.mean().item()
    row["reward/total"] = mixed.total.mean().item()
    row["reward/kl_coef_per_token"] = mixed.kl_coef_per_token
    return row
