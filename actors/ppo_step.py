"""The typed results PPO's phases hand each other (actors/ppo_loop.py), and the state of one step that holds them."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field

import torch

from actors.protocol import TokenBatch
from actors.rollout.sample import Sample


@dataclass
class Rollout:
    prompts: list[list[dict]]
    prompt_keys: list[str]
    responses: list[str]
    tokens: TokenBatch
    behaviour: torch.Tensor  # [B, L-1] the engine's log-prob of each sampled token under the distribution that drew it
    generated_tokens: int
    finished: float  # share of responses that ended with EOS
    columns: list[dict] = field(default_factory=list)  # each prompt record's other fields (reward functions)
    sources: list[str] = field(default_factory=list)  # each prompt's file:line
    samples: list[Sample] = field(default_factory=list)  # what the engines returned, row by row
    picked: list[int] = field(default_factory=list)  # each row's prompt index in the training pool
    versions: list[int] = field(default_factory=list)  # the policy that sampled each row: the step whose update
    # the engines held (0: the starting weights)
    env_rewards: torch.Tensor | None = None  # [B] each episode's summed environment reward (ppo.environment)
    env_metrics: dict = field(default_factory=dict)  # env/... of the step's episodes
    # Episodes: each row's (conversation before the model's last turn, that turn), which the reward model and
    # reward functions score; `responses` keeps every model turn joined, for the length and repetition terms.
    conversations: list[tuple[list[dict], str]] = field(default_factory=list)

    def sampled_by(self, version: int) -> torch.Tensor | None:
        """[B] bool: whether each row was sampled by the policy of `version` (the step whose update the engines and
        the policy hold now: π_old has the weights that sampled it); None when the rows' versions are unknown."""
        if not self.versions:
            return None
        return torch.tensor([row == version for row in self.versions], dtype=torch.bool)

    def ended_by_eos(self) -> torch.Tensor | None:
        """[B] bool: whether each response ended itself rather than at the token limit (None without samples)."""
        if not self.samples:
            return None
        return torch.tensor([sample.finish_reason == "stop" for sample in self.samples], dtype=torch.bool)

    def scored(self) -> tuple[list[list[dict]], list[str]]:
        """(prompts, responses) as the reward model and reward functions read them."""
        if self.conversations:
            return [turns for turns, _ in self.conversations], [last for _, last in self.conversations]
        return self.prompts, self.responses


@dataclass
class PendingRollout:
    """A rollout the engines are sampling (ppo.async_rollouts: the next step's, during this one), or its samples
    once collected (a checkpoint keeps them, so a resumed run trains on the batch the unbroken run would)."""
    step: int
    picked: list[int]  # each row's prompt index, as Rollout.picked
    chunks: list[tuple]  # each engine's generate arguments
    refs: list  # each engine's result
    version: int
    samples: list[Sample] | None = None  # collected: chunks and refs are spent

    def to_state(self) -> dict:
        """The collected batch as JSON (Python floats round-trip exactly)."""
        return {"step": self.step, "picked": self.picked, "version": self.version,
                "samples": [dataclasses.asdict(sample) for sample in self.samples]}

    @classmethod
    def from_state(cls, state: dict) -> "PendingRollout":
        return cls(state["step"], state["picked"], [], [], state["version"],
                   [Sample(**sample) for sample in state["samples"]])


@dataclass
class Scores:
    rm: torch.Tensor  # [B] preference scores (zeros when the rm term is off)
    functions: dict[str, torch.Tensor] = field(default_factory=dict)  # [B] per plug-in reward term
    errors: dict[str, int] = field(default_factory=dict)  # records a function failed on, scored 0 (errors=zero)

    @staticmethod
    def gather(parts: list["Scores"], rows: list[tuple[int, int]]) -> "Scores":
        """The scores of the given (part, row) pairs in order, e.g. the groups dynamic sampling kept from each of
        its rounds; errors are counted over every part."""
        def pick(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([tensors[part][row] for part, row in rows])

        errors: dict[str, int] = {}
        for part in parts:
            for name, count in part.errors.items():
                errors[name] = errors.get(name, 0) + count
        return Scores(pick([p.rm for p in parts]),
                      {name: pick([p.functions[name] for p in parts]) for name in parts[0].functions}, errors)


@dataclass
class DynamicSampling:
    """What DAPO's dynamic sampling did in one step (ppo.dynamic_sampling)."""
    rounds: int  # sampling rounds, the first included
    groups_sampled: int
    groups_kept: int  # with a reward spread, in the batch
    groups_filled: int  # without one, put in because max_rounds ran out
    extra_tokens: int  # response tokens generated after the first round

    def metrics(self) -> dict:
        return {"dynamic/rounds": self.rounds, "dynamic/kept_share": self.groups_kept / self.groups_sampled,
                "dynamic/filled_groups": self.groups_filled, "dynamic/extra_tokens": self.extra_tokens,
                "dynamic/groups_sampled": self.groups_sampled}


@dataclass
class LogProbs:
    old: torch.Tensor  # [B, L-1] the policy before the update, as PPO's ratio takes it (ppo.trainer_logprobs)
    ref: torch.Tensor  # [B, L-1] the frozen reference at the rollout temperature
    kl_old: torch.Tensor  # [B, L-1] the policy before the update at the rollout temperature: the KL's side
    dropped_share: float = 0.0  # response tokens whose processed π_old fell outside the trainer's top-p cut


@dataclass
class Advantages:
    advantages: torch.Tensor
    returns: torch.Tensor
    token_rewards: torch.Tensor
    seq_kl: torch.Tensor  # [B] with the configured estimator
    seq_kl_k3: float  # batch mean with k3 (non-negative; logged for comparison whatever the estimator)
    kl_coef: float
    kl_loss_coef: float
    reward_metrics: dict


@dataclass
class StepResult:
    metrics: dict
    alarms: list = field(default_factory=list)
    stop: bool = False
    checkpoint: bool = False  # save this step whatever ppo.save_every says (the state after a rollback)


def progress_before(step: int, steps: int) -> float:
    """The share of the run done before step `step` (1-based) of `steps`: 0 for the first, (steps - 1) / steps for
    the last, so a schedule piece that covers the first 20% of the run covers exactly the first 20% of its steps."""
    return (step - 1) / max(steps, 1)


@dataclass
class StepState:
    """What the phases of one step hand each other: each phase's result lands in the field named after it."""
    step: int
    progress: float  # progress_before(step, ppo.steps): the KL schedule reads it
    timings: dict[str, float] = field(default_factory=dict)
    rollout: Rollout | None = None
    score: Scores | None = None
    dynamic: DynamicSampling | None = None  # None unless ppo.dynamic_sampling is on
    reference: LogProbs | None = None
    values: torch.Tensor | None = None  # [B, L-1]
    advantages: Advantages | None = None
    train: dict | None = None
    sync: int | None = None  # tensors loaded per engine
    monitor: StepResult | None = None


@contextlib.contextmanager
def timed(timings: dict, phase: str):
    """Adds the block's wall time, in seconds, to timings[phase]."""
    started = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - started
