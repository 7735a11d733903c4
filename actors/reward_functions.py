"""Reward functions a user plugs in (ppo.reward.functions), as OpenRLHF's reward_func, veRL's custom_reward_function
and TRL's reward_funcs: fn(prompts, responses, **columns, **kwargs) -> one number per response, batched.

    prompts    each record's chat turns (list of {"role", "content"} dicts), as the policy saw them
    responses  the decoded responses
    columns    the prompt file's other fields, one list per field aligned with the responses (e.g. answer=[...]);
               a function gets the columns its signature names, or all of them if it takes **kwargs
    kwargs     the fixed arguments of its config entry

They run in a Ray worker of their own, never in the driver, with a timeout per batch (ppo.reward.function_timeout_s).
What a function returns is checked value by value: the wrong length, NaN, ±inf or a non-number is either one line
naming the function and the first bad record (ppo.reward.function_errors=fail, the default), or that record scores
0 and is counted (zero). A function that raises is retried record by record, to name the record that makes it
raise and to score the others.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from actors.group import Located
from common.config import RewardFunctionConfig
from common.errors import RewardFunctionError
from common.plugins import load_callable


@dataclass(frozen=True)
class FunctionScores:
    """One function's scores on a batch: values [B] (0 where bad) and the bad records as (index, reason)."""
    values: list[float]
    bad: list[tuple[int, str]]


def check_values(values, size: int) -> tuple[list[float], list[tuple[int, str]]]:
    """Each value a finite real number, `size` of them; bad ones become 0 and are listed."""
    try:
        items = list(values.tolist() if hasattr(values, "tolist") else values)
    except TypeError:
        return [0.0] * size, [(0, f"returned {type(values).__name__}, not a list of numbers")]
    if len(items) != size:
        return [0.0] * size, [(0, f"returned {len(items)} values for {size} responses")]
    clean, bad = [], []
    for index, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            bad.append((index, f"returned {item!r}, not a number"))
            clean.append(0.0)
        elif not math.isfinite(item):
            bad.append((index, f"returned {item}"))
            clean.append(0.0)
        else:
            clean.append(float(item))
    return clean, bad


class RewardFunctionWorker(Located):
    """The Ray worker that imports the functions and runs them on each batch."""

    def __init__(self, specs: Sequence[RewardFunctionConfig]):
        self.functions: list[tuple[str, Callable, dict]] = [
            (spec.term, load_callable(spec.callable, f"ppo.reward.functions[{i}].callable"), dict(spec.kwargs))
            for i, spec in enumerate(specs)]

    def ping(self) -> bool:
        return True

    def score(self, prompts: list[list[dict]], responses: list[str], columns: list[dict]) -> dict[str, FunctionScores]:
        return {name: self._one(fn, kwargs, prompts, responses, columns) for name, fn, kwargs in self.functions}

    def _one(self, fn: Callable, kwargs: dict, prompts, responses, columns) -> FunctionScores:
        try:
            return FunctionScores(*check_values(self._call(fn, kwargs, prompts, responses, columns), len(responses)))
        except Exception:  # the user's code may raise anything: score record by record to find which records do it
            values, bad = [], []
            for index in range(len(responses)):
                try:
                    value = self._call(fn, kwargs, prompts[index:index + 1], responses[index:index + 1],
                                       columns[index:index + 1])
                except Exception as exc:
                    values.append(0.0)
                    bad.append((index, f"raised {type(exc).__name__}: {exc}"))
                    continue
                single, problems = check_values(value, 1)
                values.extend(single)
                bad.extend((index, reason) for _, reason in problems)
            return FunctionScores(values, bad or [(0, "raised on the whole batch but on no single record")])

    @staticmethod
    def _call(fn: Callable, kwargs: dict, prompts, responses, columns):
        names = sorted({key for row in columns for key in row})
        accepted = _accepted_columns(fn, names)
        by_column = {name: [row.get(name) for row in columns] for name in accepted}
        return fn(prompts, responses, **by_column, **kwargs)


def _accepted_columns(fn: Callable, names: list[str]) -> list[str]:
    import inspect

    parameters = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return names
    return [name for name in names if name in parameters]


def judge(specs: Sequence[RewardFunctionConfig], found: dict[str, FunctionScores], sources: list[str],
          on_error: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """({term: [B] scores}, {term: bad records}) under ppo.reward.function_errors: `fail` raises a
    RewardFunctionError naming the function and the first bad record (`sources`: each record's file:line),
    `zero` keeps the 0 the bad records were given and counts them."""
    scores, errors = {}, {}
    for spec in specs:
        result = found[spec.term]
        if result.bad and on_error == "fail":
            index, reason = result.bad[0]
            raise RewardFunctionError(f"reward function {spec.term} ({spec.callable}) {reason} for the record from "
                                      f"{sources[index]}; ppo.reward.function_errors=zero scores such records 0 "
                                      f"instead")
        scores[spec.term] = torch.tensor(result.values, dtype=torch.float32)
        errors[spec.term] = len(result.bad)
    return scores, errors


class RewardFunctions:
    """The driver's handle: scores a batch through the worker and applies ppo.reward.function_errors."""

    def __init__(self, specs: Sequence[RewardFunctionConfig], timeout_s: float, on_error: str, options: dict):
        import ray

        self.specs, self.timeout_s, self.on_error = list(specs), timeout_s, on_error
        self._remote = ray.remote(RewardFunctionWorker).options(**options)
        self.actor = self._remote.remote(self.specs)

    def ready(self) -> None:
        import ray

        ray.get(self.actor.ping.remote())

    def score(self, prompts: list[list[dict]], responses: list[str], columns: list[dict],
              sources: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """({term: [B] scores}, {term: bad records}); raises RewardFunctionError under function_errors=fail."""
        import ray

        ref = self.actor.score.remote(prompts, responses, columns)
        try:
            found: dict[str, FunctionScores] = ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.kill(self.actor)  # a call that never returns would block every later one
            self.actor = self._remote.remote(self.specs)
            raise RewardFunctionError(f"reward functions {[s.term for s in self.specs]} did not return within "
                                      f"ppo.reward.function_timeout_s={self.timeout_s:g} s on a batch of "
                                      f"{len(responses)} responses") from None
        return judge(self.specs, found, sources, self.on_error)

    def kill(self) -> None:
        import ray

        ray.kill(self.actor)
