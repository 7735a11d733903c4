"""What the policy service decides without Ray: which model it serves and how (checked before Ray starts), OpenAI's
error shape, the readable part of Ray Serve LLM's error messages, and whether a reply fits the context.

Kept apart from serve/policy_app.py, which imports Ray Serve LLM (and so vLLM): a job refuses bad input in a
second, and these rules are tested without Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from actors.modeling import load_tokenizer
from common.config import Config, resolve_path
from common.config.serving import PolicyServeConfig
from common.errors import ConfigError
from common.model_dir import check_model_dir, context_length as model_context_length
from serve import http_rules
from serve.http_rules import ApiError

SECTION = "serve_policy"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error"}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 413: "request_too_large"}


@dataclass(frozen=True)
class PolicySettings:
    """What the served app needs, resolved on the caller's side (plain values: they travel to the replicas)."""
    model_path: str
    model_id: str
    chat_template: str
    max_model_len: Optional[int]
    serve: PolicyServeConfig
    created: int  # OpenAI's Model.created, Unix seconds: see model_created


def served_model_path(cfg: Config) -> Path:
    if not cfg.serve_policy.model_path:
        raise ConfigError("no model to serve: pass --model DIR (or set serve_policy.model_path)")
    return resolve_path(cfg.serve_policy.model_path)


def context_length(cfg: PolicyServeConfig, folder: Path) -> Optional[int]:
    """serve_policy.max_model_len, else the context the model's config names (None: vLLM derives it)."""
    if cfg.max_model_len is not None:
        return cfg.max_model_len
    return model_context_length(folder)


def model_created(folder: Path) -> int:
    """When the model was last written: the newest modification time of its folder and of what is in it (a file
    rewritten in place moves only its own time; one added or renamed in, the folder's).

    OpenAI's `created` says when a model was made. vLLM's server stamps the time each answer is built instead;
    a trained policy's folder gives one time that stays put across restarts and is the same on every replica
    (settings are resolved once, on the caller's side)."""
    return int(max(path.stat().st_mtime for path in [folder, *folder.iterdir()]))


def policy_settings(cfg: Config) -> PolicySettings:
    """The served model checked and resolved (ModelDirError / ConfigError name what to fix, before Ray starts)."""
    folder = check_model_dir(served_model_path(cfg), what=f"{SECTION}.model_path (--model)")
    # The template the policy was trained with: its tokenizer's own, else serve_policy.chat_template or rayalign's
    # default (actors/modeling.py); vLLM refuses chat requests for a tokenizer without one.
    template = load_tokenizer(folder, cfg.serve_policy.chat_template).chat_template
    return PolicySettings(model_path=str(folder), model_id=cfg.serve_policy.model_id or folder.name,
                          chat_template=template, max_model_len=context_length(cfg.serve_policy, folder),
                          serve=cfg.serve_policy, created=model_created(folder))


def check_exposure(cfg: Config) -> None:
    """A service other machines can reach must require a token, unless the config says otherwise."""
    http_rules.check_exposure(cfg.serve_policy, SECTION, "policy service")


def openai_error_body(status: int, message: str, param: Optional[str] = None,
                      request_id: Optional[str] = None) -> dict:
    """OpenAI's error shape, so OpenAI clients raise their typed errors with this message."""
    if request_id is not None:
        message = f"{message} (request id {request_id})"
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": ERROR_CODES.get(status)}}


ENGINE_MESSAGE = re.compile(r"^Message: (?P<text>.*?)(?: \(Request ID: [^)]*\))?, Internal exception: ", re.S)
ENGINE_PARAM = re.compile(r"\(parameter=(?P<param>\w+)")


def engine_error(message: str) -> tuple[str, Optional[str]]:
    """The person-readable part of a Ray Serve LLM error message and the request field it names: its messages
    read "Message: <text> (Request ID: ..), Internal exception: <class> .., original exception: <text>"."""
    match = ENGINE_MESSAGE.match(message)
    text = match.group("text") if match else message
    param = ENGINE_PARAM.search(text)
    return text, param.group("param") if param else None


def plain_messages(messages: list) -> list[dict]:
    """Chat turns as {role, content: str} plus the fields a template renders besides (tool_calls, name,
    tool_call_id): a content given as parts keeps its text parts, one per line (how vLLM renders a "string"-format
    chat template)."""
    plain = []
    for message in messages:
        content = message.get("content") or ""
        if not isinstance(content, str):
            content = "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
        extra = {key: message[key] for key in ("tool_calls", "name", "tool_call_id") if message.get(key) is not None}
        plain.append({"role": message["role"], "content": content, **extra})
    return plain


def prompt_tokens(tokenizer, body) -> int:
    """The prompt's tokens as the engine renders this request: its own add_generation_prompt,
    continue_final_message, tools and chat_template_kwargs, cut to truncate_prompt_tokens when it asks (-1: no
    cut here; the context check follows). Counted with the generation prompt always on and those left out, a
    request vLLM would serve got a 400, and one it would cut short passed."""
    text = tokenizer.apply_chat_template(
        plain_messages(body.messages), tokenize=False, add_generation_prompt=body.add_generation_prompt,
        continue_final_message=body.continue_final_message,
        tools=[tool.model_dump() if hasattr(tool, "model_dump") else tool for tool in body.tools or []] or None,
        **(body.chat_template_kwargs or {}))
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    cut = body.truncate_prompt_tokens
    return min(count, cut) if cut is not None and cut >= 0 else count


def content_error(messages: list) -> Optional[ApiError]:
    """The 400 for the first message whose content is neither text nor a list of OpenAI content parts (["hi"],
    [{"type": "text"}]), or None. The request model checks a content's parts lazily, when they are first read, so
    an invalid one passed validation and failed later as a 500; here each content is read once, into a list."""
    for index, message in enumerate(messages):
        content = message.get("content")
        if content is None or isinstance(content, (str, list)):
            continue
        try:
            message["content"] = list(content)
        except ValueError:  # pydantic's ValidationError
            return ApiError(400, f"messages.{index}.content must be text or a list of content parts such as "
                                 f'{{"type": "text", "text": "..."}}', param=f"messages.{index}.content")
    return None


def template_error(exc: Exception) -> ApiError:
    """The 400 for a conversation the model's chat template refuses (roles that must alternate, a system turn the
    family has no place for), as vLLM answers it."""
    return ApiError(400, f"the model's chat template refused these messages: {exc}", param="messages")


def room_error(prompt: int, requested: int, context: int, field: str = "max_tokens") -> Optional[ApiError]:
    """The 400 OpenAI answers when the reply asked for cannot fit after the prompt (vLLM would quietly cut
    max_tokens down to the room left), naming the field the client sent (max_tokens or max_completion_tokens);
    None when it fits."""
    if prompt + requested <= context:
        return None
    return ApiError(400, f"{field}={requested} does not fit: the prompt takes {prompt} of the model's "
                         f"{context}-token context, so at most {max(context - prompt, 0)} tokens are left for the "
                         f"reply",
                    param=field)
