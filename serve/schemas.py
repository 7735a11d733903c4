"""Request and response bodies of the reward service (they are also its OpenAPI schema).

Lists must be non-empty and of equal length; strings must be strings (no silent number → text coercion):
a malformed request gets a 4xx naming the field instead of a score for the wrong thing.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: StrictStr


Prompt = Union[StrictStr, list[ChatTurn]]


def _same_length(**lists: Optional[list]) -> None:
    sizes = {name: len(values) for name, values in lists.items() if values is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError("lists must have the same length, got " + ", ".join(f"{k}={v}" for k, v in sizes.items()))


class ScoreRequest(BaseModel):
    """Score each response as a reply to the prompt at the same index."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"prompts": ["Name a colour.", [{"role": "user", "content": "Say hi."}]], "responses": ["Blue.", "Hi!"]}]})

    prompts: list[Prompt] = Field(min_length=1, description="a user message, or the chat turns before the reply")
    responses: list[StrictStr] = Field(min_length=1, description="the assistant replies to score")

    @model_validator(mode="after")
    def _lengths_match(self) -> "ScoreRequest":
        _same_length(prompts=self.prompts, responses=self.responses)
        return self

    def chats(self) -> list[list[dict]]:
        """Every prompt as chat turns (a plain string is one user turn)."""
        return [[{"role": "user", "content": p}] if isinstance(p, str) else [t.model_dump() for t in p]
                for p in self.prompts]


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="one reward per (prompt, response); higher is better")


class GetRewardRequest(BaseModel):
    """The remote reward-model request of OpenRLHF-style trainers: `query` is prompt + response, already
    rendered with the policy's chat template; `prompts` (optional) is the rendered prompt part of each
    query; `labels` are accepted and ignored. Unknown extra fields are ignored too, so newer trainers that
    send more keep working."""
    model_config = ConfigDict(extra="ignore")

    query: list[StrictStr] = Field(min_length=1)
    prompts: Optional[list[StrictStr]] = None
    labels: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _lengths_match(self) -> "GetRewardRequest":
        _same_length(query=self.query, prompts=self.prompts, labels=self.labels)
        return self


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="the reward of each query (what trainers optimise)")
    scores: list[float] = Field(description="the same values, for trainers that filter on 'scores'")


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong with the request, for a person to read")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    input_format: Literal["chat", "pair"]


class Stats(BaseModel):
    requests: int = Field(description="scoring requests answered by this replica")
    batches: int = Field(description="model batches run by this replica")
    batch_sizes: dict[int, int] = Field(description="requests per batch → how many batches had that many")
