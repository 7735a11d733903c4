"""Chats → token ids with a loss mask that covers assistant tokens only.

Works with any chat template and any fast tokenizer: the assistant spans are found in *characters* by
rendering growing prefixes of the conversation, then mapped onto tokens with the tokenizer's offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedChat:
    input_ids: list[int]
    labels: list[int]  # input id where the token belongs to an assistant reply, IGNORE_INDEX elsewhere

    @property
    def num_trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the [start, end) character span of every assistant reply in it."""
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(render(tokenizer, messages[: i + 1]))
        spans.append((start, end))
    return text, spans


def encode_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> EncodedChat:
    """Token ids of the rendered chat, labels masked to assistant tokens; truncated to `max_length`."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = []
    for token_id, (start, end) in zip(ids, enc["offset_mapping"]):
        inside = any(s <= start < e for s, e in spans) and end > start
        labels.append(token_id if inside else IGNORE_INDEX)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedChat(ids, labels)


def encode_prompt(tokenizer, messages: list[dict], max_tokens: int | None = None) -> list[int]:
    """Prompt ids ending in the assistant header, left-truncated (the latest turns matter most)."""
    ids = tokenizer(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    return ids[-max_tokens:] if max_tokens is not None and len(ids) > max_tokens else list(ids)
