"""The synthesis section (jobs.synthesize, jobs.funnel): LLM-generated candidate SFT records from seed tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from common.configlib import param
from common.errors import ConfigError

# Self-instruct's shape (Wang et al. 2023): a few seed tasks shown, one new task asked for. {examples} is the
# numbered list of sampled seed instructions; a template without it shows none.
DEFAULT_TEMPLATE = ("Here are some tasks people ask an assistant to do:\n{examples}\n"
                    "Write one new task, different from these, in the same style. Reply with the task only.")


@dataclass(frozen=True)
class SynthConfig:
    seed_tasks: str = param("../shared/data/sft/self-instruct/seed_tasks.jsonl",
                            "seed tasks (any format jobs.records reads; their first user turn is the task)")
    count: int = param(200, "candidate records to generate (N)", gt=0)
    generator: Literal["engine", "http"] = param(
        "engine", "engine: a pool of rayalign's vLLM rollout engines on the cluster (Ray Data actors); http: any "
                  "OpenAI-compatible chat-completions endpoint (synth.endpoint)")
    model: Optional[str] = param(None, "model the engine pool loads (unset: model.path)")
    engines: int = param(1, "engine actors in the pool (generator=engine)", gt=0)
    engine_cpus: int = param(1, "logical CPUs each engine actor holds; a CPU engine computes on that many threads "
                                "(vLLM's own binding to every core is off, so engines side by side do not fight "
                                "over the same cores)", gt=0)
    endpoint: Optional[str] = param(None, "base URL of an OpenAI-compatible API, e.g. http://host:8000/v1 "
                                          "(generator=http)")
    endpoint_model: Optional[str] = param(None, "model name sent to the endpoint (unset: the first one its "
                                                "/v1/models lists)")
    token_env: str = param("RAYALIGN_SYNTH_TOKEN", "environment variable holding the endpoint's API key")
    token_file: Optional[str] = param(None, "file holding the endpoint's API key (wins over token_env)")
    concurrency: int = param(8, "requests in flight per HTTP worker", gt=0)
    http_workers: int = param(1, "Ray Data actors sending requests (generator=http)", gt=0)
    timeout_s: float = param(60.0, "seconds one HTTP request may take before it is retried", gt=0)
    retries: int = param(3, "tries after the first for a request that fails (timeout, 5xx, connection) or a "
                            "generation that comes back empty; then the candidate is counted as failed", ge=0)
    backoff_s: float = param(0.5, "first wait before a retry; doubles each time", ge=0.0)
    template: str = param(DEFAULT_TEMPLATE, "the task-writing prompt; {examples} is replaced by the sampled seed "
                                            "tasks, one per numbered line")
    examples_per_prompt: int = param(3, "seed tasks shown in each prompt (sampled per candidate by its seed)", ge=0)
    max_example_chars: int = param(300, "a seed task longer than this is cut there in the prompt (a few seed tasks "
                                        "run to pages; they would crowd out the rest and the model's context)", gt=0)
    temperature: float = param(1.0, "sampling temperature (high: diverse candidates)", ge=0.0)
    top_p: float = param(0.95, "nucleus sampling mass", gt=0.0, le=1.0)
    repetition_penalty: float = param(1.1, "engine repetition penalty (1.0 = off; not sent to HTTP endpoints)",
                                      gt=0.0)
    max_task_tokens: int = param(48, "length cap of a generated task, in tokens", gt=0)
    max_response_tokens: int = param(128, "length cap of a generated answer, in tokens", gt=0)
    max_prompt_tokens: int = param(384, "prompts longer than this are cut from the left (engine)", gt=0)
    min_chars: int = param(1, "a generated task or answer shorter than this (after trimming) is garbage: "
                              "retried, then counted as failed", ge=1)
    seed: Optional[int] = param(None, "seed of the candidates' sampling and example choice (unset: run.seed)")
    batch_size: int = param(64, "candidates per batch: the unit written to disk and skipped on a re-run", gt=0)
    category: str = param("general", "curation category the candidates enter jobs.curate with (a key of "
                                     "curate.mix)")
    repeat_seeds: int = param(0, "extra candidates that reuse the seeds of the first ones (identical generations): "
                                 "a check that the diversity filter removes every one", ge=0)

    def check(self) -> None:
        if self.generator == "http" and not self.endpoint:
            raise ConfigError("endpoint must be set when generator=http (e.g. http://host:8000/v1)")
        if self.repeat_seeds > self.count:
            raise ConfigError(f"repeat_seeds ({self.repeat_seeds}) must not exceed count ({self.count})")
        try:
            self.template.format(examples="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"template must use only the {{examples}} placeholder (double other braces): "
                              f"{exc!r}") from None
