"""Environments for multi-turn rollouts (ppo.environment), as OpenRLHF's agent functions, veRL's agent loop and TRL's
environments: an episode opens with the messages `reset` gives, then each model turn goes to `step`, which answers
with new messages (the observation: a user turn, a tool's result), a reward and whether the episode is over.

    class Environment:
        def reset(self, record: dict) -> list[dict]: ...          # the chat the model answers first
        def step(self, assistant: str) -> tuple[list[dict], float, bool]: ...

`record` is the prompt file's record: its chat under "messages" and its other fields (e.g. a word to ask about).
One instance serves one episode. An environment is named in the registry below or given as 'pkg.module:Class' /
'path/to/file.py:Class' with ppo.environment.kwargs for its constructor.

Tools: ToolEnvironment parses tool calls from the model's turn, `<tool_call>{"name": ..., "arguments": {...}}
</tool_call>`, and runs each in a fresh Python subprocess with a timeout and the network switched off (socket
creation raises in that process); a malformed call, an unknown tool, a tool that raises or runs out of time all
become an observation the model reads, never a crash.

The environments run in a Ray worker of their own (EnvironmentWorker), each step with a timeout: an environment
that raises, hangs past ppo.environment.timeout_s or returns malformed messages ends its episode with reward 0, and
the episode is counted (env/errors) and logged with its prompt's file:line; the PPO step goes on.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from actors.algo.registry import Registry
from actors.group import Located
from common.plugins import load_callable

ENVIRONMENTS: Registry[Callable[..., "Environment"]] = Registry("environment")
TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


class Environment:
    """The interface (module docstring); subclasses override both methods."""

    def reset(self, record: dict) -> list[dict]:
        raise NotImplementedError

    def step(self, assistant: str) -> tuple[list[dict], float, bool]:
        raise NotImplementedError


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


@ENVIRONMENTS.register("follow_up")
class FollowUp(Environment):
    """Asks a follow-up question about a word (the record's `word` column) after the model's first answer, and pays
    1 when the second answer uses that word: learning it means reading the observation, not only the prompt."""

    def __init__(self, question: str = "What happened with the {word}? Tell me about the {word}."):
        self.question = question

    def reset(self, record: dict) -> list[dict]:
        self.word = str(record["word"]).lower()
        self.turn = 0
        return list(record["messages"])

    def step(self, assistant: str) -> tuple[list[dict], float, bool]:
        self.turn += 1
        if self.turn == 1:
            return [{"role": "user", "content": self.question.format(word=self.word)}], 0.0, False
        return [], float(self.word in _words(assistant)), True


# ---- tools -----------------------------------------------------------------------------------------------
NO_NETWORK = """
import socket
class _NoSocket(socket.socket):  # a class, so modules that subclass socket.socket still import
    def __init__(self, *args, **kwargs):
        raise PermissionError("tools run without network access")
def _refuse(*args, **kwargs):
    raise PermissionError("tools run without network access")
socket.socket = _NoSocket
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""
RUNNER = NO_NETWORK + """
import importlib, json, sys
request = json.loads(sys.stdin.read())
module, _, name = request["tool"].rpartition(":")
fn = getattr(importlib.import_module(module), name)
print(json.dumps({"result": fn(**request["arguments"])}))
"""


def run_tool(callable_spec: str, arguments: dict, timeout_s: float) -> str:
    """The tool's result as text, or the reason it has none: run in a fresh Python process (sys.path as here,
    network off) that is killed after timeout_s."""
    try:
        done = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps({"tool": callable_spec,
                                                                               "arguments": arguments}),
                              capture_output=True, text=True, timeout=timeout_s,
                              env={"PYTHONPATH": ":".join(p for p in sys.path if p), "PATH": "/usr/bin:/bin"})
    except subprocess.TimeoutExpired:
        return f"error: the tool ran past its {timeout_s:g} s limit"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"error: {last[:300]}"
    try:
        return str(json.loads(done.stdout.strip().splitlines()[-1])["result"])
    except (ValueError, KeyError, IndexError):
        return f"error: the tool printed something other than its result: {done.stdout[-200:]!r}"


def parse_tool_call(text: str) -> tuple[str, dict] | str | None:
    """(name, arguments) of the first tool call in `text`; an error message when the call is malformed; None when
    there is no call."""
    found = TOOL_CALL.search(text)
    if found is None:
        return None
    try:
        call = json.loads(found.group(1))
    except json.JSONDecodeError as exc:
        return f"error: the tool call is not JSON ({exc.msg})"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or \
            not isinstance(call.get("arguments", {}), dict):
        return 'error: a tool call is {"name": "...", "arguments": {...}}'
    return call["name"], call.get("arguments", {})


class ToolEnvironment(Environment):
    """Runs the tool calls a model makes (module docstring) and returns each result as a `tool` turn. Subclasses
    set `tools` (name → 'pkg.module:function') and decide the reward in `score`."""

    tools: dict[str, str] = {}
    tool_timeout_s: float = 5.0

    def __init__(self, max_calls: int = 3, tool_timeout_s: float = 5.0):
        self.max_calls, self.tool_timeout_s = max_calls, tool_timeout_s

    def reset(self, record: dict) -> list[dict]:
        self.record, self.calls = record, 0
        return list(record["messages"])

    def step(self, assistant: str) -> tuple[list[dict], float, bool]:
        call = parse_tool_call(assistant)
        if call is None or self.calls >= self.max_calls:
            return [], self.score(assistant), True
        self.calls += 1
        if isinstance(call, str):
            return [{"role": "tool", "content": call}], 0.0, False
        name, arguments = call
        if name not in self.tools:
            return [{"role": "tool", "content": f"error: unknown tool {name!r}; tools: {sorted(self.tools)}"}], 0.0, \
                False
        return [{"role": "tool", "content": run_tool(self.tools[name], arguments, self.tool_timeout_s)}], 0.0, False

    def score(self, final_answer: str) -> float:
        return 0.0


@ENVIRONMENTS.register("calculator")
class Calculator(ToolEnvironment):
    """Arithmetic with an `add` tool: pays 1 when the final answer's last number (or its '#### <number>') equals the
    record's `answer`. Not a substring test: that paid "15" for 5, and every reply for a record without an answer."""

    tools = {"add": "actors.tools:add"}

    def reset(self, record: dict) -> list[dict]:
        if "answer" not in record:
            raise ValueError("the calculator environment needs an 'answer' field in every record")
        return super().reset(record)

    def score(self, final_answer: str) -> float:
        from actors.reward_library import expected_number, final_number

        return float(final_number(final_answer) == expected_number(self.record["answer"]))


# ---- the worker ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Turn:
    messages: list[dict]
    reward: float
    done: bool
    error: str | None = None  # why the episode was ended (reward 0)


def environment_factory(name: str, where: str = "ppo.environment.name") -> Callable[..., Environment]:
    """A registered environment, or the class a 'pkg.module:Class' / 'file.py:Class' spec names."""
    if ":" not in name:
        return ENVIRONMENTS.get(name)
    return load_callable(name, where)


def check_messages(messages) -> str | None:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and
                                                 isinstance(m.get("content"), str) for m in messages):
        return f"returned messages that are not a list of {{role, content}} strings: {str(messages)[:200]}"
    return None


class EnvironmentWorker(Located):
    """Holds one environment per running episode and steps them: every call of a batch at once, each on a thread of
    its own, under one deadline of timeout_s for the batch (a call past it is left running in its thread and its
    episode ended). With a shared pool of 8 threads and a wait per call, the calls queued behind a few hung ones
    timed out without running, the waits added up past the driver's own limit (every episode then scored 0), and
    the hung threads starved the next batch."""

    def __init__(self, name: str, kwargs: dict, timeout_s: float):
        self.factory, self.kwargs, self.timeout_s = environment_factory(name), dict(kwargs), timeout_s
        self.episodes: dict[int, Environment] = {}

    def ping(self) -> bool:
        return True

    def reset(self, records: list[dict]) -> list[Turn]:
        self.episodes = {i: self.factory(**self.kwargs) for i in range(len(records))}
        return self._run([functools.partial(lambda env, r: (env.reset(r), 0.0, False), self.episodes[i], record)
                          for i, record in enumerate(records)], opening=True)

    def step(self, episodes: list[int], texts: list[str]) -> list[Turn]:
        return self._run([functools.partial(self.episodes[i].step, text) for i, text in zip(episodes, texts)])

    def _run(self, calls: list[Callable], opening: bool = False) -> list[Turn]:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(len(calls), 1), thread_name_prefix="env")
        futures = [pool.submit(call) for call in calls]
        concurrent.futures.wait(futures, timeout=self.timeout_s)
        pool.shutdown(wait=False, cancel_futures=True)  # a hung call keeps its thread, not the next batch's
        return [self._settle(future, opening) for future in futures]

    def _settle(self, future, opening: bool = False) -> Turn:
        if not future.done():
            return Turn([], 0.0, True, f"did not return within ppo.environment.timeout_s={self.timeout_s:g} s")
        try:
            result = future.result()
        except Exception as exc:  # the user's environment may raise anything
            return Turn([], 0.0, True, f"raised {type(exc).__name__}: {exc}")
        try:
            messages, reward, done = result
            reward, done = float(reward), bool(done)
        except (TypeError, ValueError):
            return Turn([], 0.0, True, f"returned {str(result)[:200]}, not (messages, reward, done)")
        problem = check_messages(messages)
        if problem is not None or (opening and not messages):
            return Turn([], 0.0, True, problem or "reset returned no messages")
        return Turn(list(messages), reward, done)


class Environments:
    """The driver's handle on the environment worker (ppo.environment)."""

    def __init__(self, name: str, kwargs: dict, timeout_s: float, options: dict):
        import ray

        self.args = (name, kwargs, timeout_s)
        self.timeout_s = timeout_s
        self._remote = ray.remote(EnvironmentWorker).options(**options)
        self.actor = self._remote.remote(*self.args)

    def ready(self) -> None:
        import ray

        ray.get(self.actor.ping.remote())

    def _get(self, ref, count: int) -> list[Turn]:
        """The worker bounds each environment call; this bounds the worker itself (a dead or stuck worker ends
        the call's episodes, and a fresh one takes over for the next batch)."""
        import ray

        try:
            return ray.get(ref, timeout=self.timeout_s * 2 + 30)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError) as exc:
            ray.kill(self.actor)
            self.actor = self._remote.remote(*self.args)
            return [Turn([], 0.0, True, f"the environment worker failed ({type(exc).__name__})")] * count

    def reset(self, records: list[dict]) -> list[Turn]:
        return self._get(self.actor.reset.remote(records), len(records))

    def step(self, episodes: list[int], texts: list[str]) -> list[Turn]:
        return self._get(self.actor.step.remote(episodes, texts), len(episodes))

    def kill(self) -> None:
        import ray

        ray.kill(self.actor)
