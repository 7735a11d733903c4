"""Chats → token ids with a loss mask that covers assistant tokens only.

Works with any chat template and any fast tokenizer: the assistant spans are found in *characters* by
rendering growing prefixes of the conversation, then mapped onto tokens with the tokenizer's offsets.
"""

from __future__ import annotations

import os
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
    """The rendered chat and the [start, end) character span of every assistant reply in it: from after the
    generation header to the end of the reply's end-of-turn marker.

    A span is read off growing renders (the conversation up to the reply's header, then through the reply) where
    they open the whole chat. Some templates render a shorter conversation otherwise: Qwen3 keeps an answer's
    <think> block only while it is the last turn, Phi-3 ends a rendered conversation with EOS. There the reply is
    found in the whole chat after the previous one, its span running through the end-of-turn marker that follows
    it; growing renders trained the next user turn's header (Qwen3, Phi-3) or nothing at all."""
    text = render(tokenizer, messages)
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1])
        content = message["content"]
        if text.startswith(through) and through.startswith(head) and len(head) >= cursor \
                and content in through[len(head):]:
            spans.append((len(head), len(through)))
            cursor = len(through)
            continue
        # The reply follows its own generation header: searched for from there, not from the previous reply's end,
        # where the user's turn between may hold the same words ("Say hello" → "hello").
        # The header is what the generation prompt adds (Phi-3 closes a rendered conversation with EOS instead).
        header = head[len(os.path.commonprefix([head, render(tokenizer, messages[:i])])):]
        found = text.find(header, cursor) if header else -1
        anchor = found + len(header) if found >= 0 else cursor
        at = text.find(content, anchor) if content else anchor
        if at < 0:
            raise ValueError(f"the chat template does not render assistant turn {i} verbatim, so its loss mask "
                             f"cannot be found: set model.chat_template to one that does")
        end = at + len(content)
        end += len(_closing(text[end:], turn_end(tokenizer, messages[:i])))
        spans.append((at, end))
        cursor = end
    return text, spans


TURN_SENTINEL = "\u2063rayalign-turn-end\u2063"


def turn_end(tokenizer, history: list[dict]) -> str:
    """What the template writes after an assistant reply that ends the conversation (its end-of-turn marker, and
    whatever closes a rendered conversation)."""
    rendered = render(tokenizer, history + [{"role": "assistant", "content": TURN_SENTINEL}])
    return rendered[rendered.find(TURN_SENTINEL) + len(TURN_SENTINEL):] if TURN_SENTINEL in rendered else ""


def _closing(after: str, end: str) -> str:
    """The end-of-turn marker in `after` (what follows a reply mid-chat): the part it shares with `end` (what
    follows a last reply), cut back to a marker's or line's end where the two only share the start of the next
    thing ('<|end|>\\n<|user|>' and '<|end|>\\n</s>' share '<|end|>\\n<')."""
    n = len(os.path.commonprefix([after, end]))
    if n == len(end):
        return end
    cut = max(after.rfind(">", 0, n), after.rfind("\n", 0, n))
    return after[:cut + 1] if cut >= 0 else after[:n]


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
    """Prompt ids ending in the assistant header, at most `max_tokens`: the oldest turns go first, whole, and the
    chat is rendered again, so BOS, the system turn and every role header stay (cutting the rendered ids from the
    left began a prompt mid-word, without BOS or system turn, unlike anything the policy saw in SFT). A last turn
    longer than the budget alone keeps its latest tokens."""
    def encoded(turns: list[dict]) -> list[int]:
        return list(tokenizer(render(tokenizer, turns, add_generation_prompt=True),
                              add_special_tokens=False)["input_ids"])

    ids = encoded(messages)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while len(rest) > 1:
        rest = rest[1:]
        while len(rest) > 1 and rest[0]["role"] != "user":  # a chat starts with a user turn (alternating templates)
            rest = rest[1:]
        ids = encoded(system + rest)
        if len(ids) <= max_tokens:
            return ids
    return ids[-max_tokens:]
