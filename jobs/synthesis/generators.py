"""The two generators of jobs.synthesize, and the Ray Data callable that turns a batch of candidate numbers into
candidates with them.

- EngineGenerator: rayalign's own vLLM rollout engine (actors/rollout), one per Ray Data actor, so a pool of
  them scales out over a cluster unchanged. Not `ray.data.llm`'s vLLM processor: on the vLLM CPU build its
  engine stage asks for GPUs (see README, "Synthetic data"), while the rollout engine is the one PPO already
  runs, seeds per request and loads the same checkpoints.
- HttpGenerator: any OpenAI-compatible chat-completions endpoint through the `openai` client, `concurrency`
  requests in flight per actor, each with a timeout and retries with doubling backoff on timeouts, connection
  errors, 429 and 5xx (a 4xx other than 429 is final: asking again would get the same answer).

Both answer `complete(messages, seed_indices, draw, max_tokens)` with one Reply per conversation, an error being
final (the HTTP generator has retried what a retry can mend, and says how often); `complete_stage` adds the garbage
retries (a usable text or give up after synth.retries), each try from its own seed stream so a retry is a new sample,
not the same one again. So synth.retries bounds each layer once: a request is sent at most retries + 1 times per
generation, not (retries + 1)² times, and a final 4xx once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from actors.rollout.sample import sample_seed
from common.config import RolloutConfig, SynthConfig
from jobs.synthesis.prompts import (ANSWER_DRAW, TASK_DRAW, SeedTask, answer_messages, examples_for, task_messages,
                                    usable)

log = logging.getLogger("rayalign.synthesize")

OUTPUT_COLUMNS = ("task", "answer", "task_tries", "answer_tries", "transport_retries", "error", "seed_tasks")


class Reply(NamedTuple):
    text: str | None
    error: str  # "" unless the request failed for good
    # Sends after the first: a timeout, connection error, 429, 5xx or malformed reply that a retry mended (or not).
    # Kept apart from the garbage retries: these say how healthy the endpoint is, not how good the model is.
    transport_retries: int = 0


Complete = Callable[[list[list[dict]], list[int], int, int], list[Reply]]


@dataclass
class Attempt:
    text: str | None
    tries: int
    error: str  # "" when text is usable
    transport_retries: int = 0  # over all of its tries


def complete_stage(conversations: list[list[dict]], seed_indices: list[int], complete: Complete, draw: int,
                   max_tokens: int, retries: int, min_chars: int) -> list[Attempt]:
    """One generation per conversation; the ones that come back unusable are asked again (all of them in one batch
    per round), from draw + try. A failed request is not: `complete` returns only final errors."""
    results = [Attempt(None, 0, "not tried") for _ in conversations]
    pending = list(range(len(conversations)))
    for attempt in range(retries + 1):
        if not pending:
            break
        outputs = complete([conversations[i] for i in pending], [seed_indices[i] for i in pending], draw + attempt,
                           max_tokens)
        still = []
        for i, reply in zip(pending, outputs):
            text, error = reply.text, reply.error
            unusable = not error and not usable(text, min_chars)
            if unusable:
                error = f"unusable generation {(text or '').strip()[:60]!r} (shorter than synth.min_chars={min_chars})"
                still.append(i)
            results[i] = Attempt(text if not error else None, attempt + 1, error,
                                 results[i].transport_retries + reply.transport_retries)
        pending = still
    return results


class EngineGenerator:
    def __init__(self, model_path: str, cfg: SynthConfig, seed: int, max_model_len: int, engine: str = "vllm"):
        import torch

        from actors.modeling import load_tokenizer
        from actors.rollout.engines import ENGINES

        if not torch.cuda.is_available():
            # vLLM's CPU engine binds its threads to every physical core by default: two engines on one machine
            # would then share the same cores and each run slower than one alone (measured 0.6x for 2 vs 1).
            # The actor's CPUs decide instead.
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            torch.set_num_threads(cfg.engine_cpus)

        rollout = RolloutConfig(temperature=cfg.temperature, top_p=cfg.top_p,
                                repetition_penalty=cfg.repetition_penalty, max_new_tokens=cfg.max_response_tokens,
                                max_prompt_tokens=cfg.max_prompt_tokens)
        self.engine = ENGINES[engine](model_path, rollout, seed, max_model_len)
        self.tokenizer = load_tokenizer(model_path)
        self.max_prompt_tokens = cfg.max_prompt_tokens

    def complete(self, conversations: list[list[dict]], seed_indices: list[int], draw: int,
                 max_tokens: int) -> list[Reply]:
        from actors.chat import encode_prompt

        prompts = [encode_prompt(self.tokenizer, messages, self.max_prompt_tokens) for messages in conversations]
        samples = self.engine.generate(prompts, max_tokens=max_tokens, draw=draw, indices=seed_indices)
        return [Reply(self.tokenizer.decode(s.response_ids, skip_special_tokens=True), "") for s in samples]


class HttpGenerator:
    def __init__(self, cfg: SynthConfig, model: str, token: str | None, seed: int):
        from openai import OpenAI

        # The client's own retries are off: ours are counted (each Reply's transport_retries, the report's
        # endpoint health) and use synth.backoff_s.
        self.client = OpenAI(base_url=cfg.endpoint, api_key=token or "unused", timeout=cfg.timeout_s, max_retries=0)
        self.cfg, self.model, self.seed = cfg, model, seed

    def complete(self, conversations: list[list[dict]], seed_indices: list[int], draw: int,
                 max_tokens: int) -> list[Reply]:
        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(lambda args: self._one(args[0], args[1], draw, max_tokens),
                                 zip(conversations, seed_indices)))

    def _one(self, messages: list[dict], seed_index: int, draw: int, max_tokens: int) -> Reply:
        import openai

        cfg, error = self.cfg, ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=cfg.temperature,
                    top_p=cfg.top_p, seed=sample_seed(self.seed, draw, seed_index))
                return Reply(reply.choices[0].message.content, "", attempt)
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except openai.APIStatusError as exc:
                return Reply(None, f"HTTP {exc.status_code}: {exc.message}", attempt)
            except (IndexError, AttributeError, TypeError) as exc:  # a 200 whose body is not a chat completion
                error = f"malformed reply: {exc}"
        return Reply(None, f"{error} (after {cfg.retries + 1} tries)", cfg.retries)


class GenerateCandidates:
    """Ray Data callable: a batch of candidate numbers → each one's task (stage 1: write a task like the sampled
    seed tasks) and answer (stage 2: answer it), or the error that ended it."""

    def __init__(self, cfg: SynthConfig, seed: int, seed_tasks: list[SeedTask], generator: dict):
        self.cfg, self.seed, self.seed_tasks = cfg, seed, seed_tasks
        if generator["kind"] == "engine":
            self.generator = EngineGenerator(generator["model_path"], cfg, seed, generator["max_model_len"],
                                             generator["engine"])
        else:
            self.generator = HttpGenerator(cfg, generator["model"], generator["token"], seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg, seed_indices = self.cfg, [int(i) for i in batch["seed_index"]]
        examples = [examples_for(self.seed_tasks, cfg.examples_per_prompt, self.seed, i) for i in seed_indices]
        prompts = [task_messages(cfg.template, ex, cfg.max_example_chars) for ex in examples]
        tasks = complete_stage(prompts, seed_indices, self.generator.complete, TASK_DRAW, cfg.max_task_tokens,
                               cfg.retries, cfg.min_chars)
        written = [i for i, t in enumerate(tasks) if not t.error]
        answers = dict(zip(written, complete_stage(
            [answer_messages(tasks[i].text) for i in written], [seed_indices[i] for i in written],
            self.generator.complete, ANSWER_DRAW, cfg.max_response_tokens, cfg.retries, cfg.min_chars)))
        rows = [self._row(task, answers.get(i), ex) for i, (task, ex) in enumerate(zip(tasks, examples))]
        for column in OUTPUT_COLUMNS:
            batch[column] = np.array([row[column] for row in rows], dtype=object)
        return batch

    @staticmethod
    def _row(task: Attempt, answer: Attempt | None, examples: list[SeedTask]) -> dict:
        error = f"task: {task.error}" if task.error else f"answer: {answer.error}" if answer.error else ""
        return {"task": task.text or "", "answer": (answer.text if answer else None) or "", "task_tries": task.tries,
                "answer_tries": answer.tries if answer else 0,
                "transport_retries": task.transport_retries + (answer.transport_retries if answer else 0),
                "error": error, "seed_tasks": json.dumps([e.id for e in examples])}
