"""The policy service on real Ray Serve LLM over real HTTP on 127.0.0.1, driven by the `openai` client: it lists
the model, answers n choices with exact usage counts, reproduces a seed, refuses a wrong key, an unknown model and a
reply longer than the context with OpenAI's typed errors. One served app for the whole module (start-up is most of
its cost)."""

from __future__ import annotations

import openai
import pytest
import requests

from actors.chat import encode_prompt
from actors.modeling import load_tokenizer
from common.config import load_config
from common.errors import EmptyDatasetError, EndpointError
from serve.policy_rules import model_created
from tests.conftest import POLICY_PATH, TINY_CPU
from tests.helpers import free_port

pytestmark = [pytest.mark.ray]
TOKEN = "policy-s3cret"
MODEL = "stories--260k"  # an id with '--', which Ray's model route rewrites to '/'
MESSAGES = [{"role": "system", "content": "You tell short stories."},
            {"role": "user", "content": "Tell me a story about a cat."}]
CONTEXT = 512  # stories260K's max_position_embeddings


@pytest.fixture(scope="module")
def base_url(ray_session, tmp_path_factory):
    from ray import serve

    from serve import policy_app

    cfg = load_config(TINY_CPU, [f"serve_policy.model_path={POLICY_PATH}", f"serve_policy.port={free_port()}",
                                 f"serve_policy.auth_token_file={token_file(tmp_path_factory)}",
                                 f"serve_policy.model_id={MODEL}"])
    try:
        yield policy_app.deploy(cfg)
    finally:
        serve.shutdown()


def token_file(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "policy-token"
    path.write_text(TOKEN)
    return path


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=60)


def chat(client, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs)


def test_models_lists_the_served_model(client, base_url):
    assert [model.id for model in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL  # its own card URL (a 404 while '--' was rewritten)
    # OpenAI's `created` (the openai package's Model requires it): when the model folder was last written
    created = model_created(POLICY_PATH)
    for url in (f"{base_url}/models", f"{base_url}/models/{MODEL}"):
        answer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        card = answer["data"][0] if "data" in answer else answer
        assert type(card["created"]) is int and card["created"] == created
    assert client.models.retrieve(MODEL).created == created


def test_n_choices_with_the_tokenizers_usage_counts(client):
    reply = chat(client, n=3, max_tokens=12, temperature=1.0, seed=7, logprobs=True)
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    for choice in reply.choices:
        assert choice.message.role == "assistant" and choice.message.content.strip()
        assert choice.finish_reason in ("stop", "length")
    prompt_ids = encode_prompt(load_tokenizer(POLICY_PATH), MESSAGES)  # the chat template training used
    generated = sum(len(choice.logprobs.content) for choice in reply.choices)  # one entry per sampled token
    assert reply.usage.prompt_tokens == len(prompt_ids)
    assert reply.usage.completion_tokens == generated <= 3 * 12
    assert reply.usage.total_tokens == len(prompt_ids) + generated


def test_a_seed_reproduces_its_text_and_other_seeds_differ(client):
    def text(seed: int) -> str:
        return chat(client, max_tokens=16, temperature=1.0, seed=seed).choices[0].message.content

    assert text(11) == text(11)
    assert len({text(seed) for seed in (11, 12, 13, 14)}) > 1  # four draws at temperature 1 cannot all agree


def test_stop_strings_end_the_reply(client):
    reply = chat(client, max_tokens=60, temperature=1.0, seed=3, stop=["."]).choices[0]
    assert "." not in reply.message.content
    assert reply.finish_reason in ("stop", "length")


def test_a_wrong_or_missing_key_gets_401_and_health_needs_none(base_url):
    with pytest.raises(openai.AuthenticationError, match="invalid bearer token"):
        chat(openai.OpenAI(base_url=base_url, api_key="not-the-token", max_retries=0), max_tokens=4)
    missing = requests.post(f"{base_url}/chat/completions", json={"model": MODEL, "messages": MESSAGES}, timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(f"{base_url}/models", timeout=30).status_code == 401
    health = requests.get(base_url.removesuffix("/v1") + "/healthz", timeout=30).json()
    assert health == {"status": "ok", "model": MODEL}  # names the model, not its path


def test_an_unknown_model_gets_404(client):
    with pytest.raises(openai.NotFoundError) as failure:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES, max_tokens=4)
    assert failure.value.body["code"] == "model_not_found" and failure.value.body["param"] == "model"
    assert MODEL in failure.value.body["message"]


@pytest.mark.parametrize("max_tokens", [CONTEXT + 1, CONTEXT - 5])  # alone, and with the prompt, past the context
def test_a_reply_longer_than_the_context_gets_400_naming_max_tokens(client, max_tokens):
    with pytest.raises(openai.BadRequestError, match="max_tokens") as failure:
        chat(client, max_tokens=max_tokens)
    assert "Internal exception" not in failure.value.body["message"]
    assert failure.value.body["param"] == "max_tokens"


def test_a_prompt_longer_than_the_context_gets_400(client):
    with pytest.raises(openai.BadRequestError) as failure:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "cat " * CONTEXT}])
    assert "Internal exception" not in failure.value.body["message"]


def test_bad_fields_get_400_naming_the_field(base_url):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    bad = requests.post(f"{base_url}/chat/completions", headers=headers, timeout=30,
                        json={"model": MODEL, "messages": MESSAGES, "temperature": "hot"})
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["param"] == "temperature" and "temperature" in bad.json()["error"]["message"]
    broken = requests.post(f"{base_url}/chat/completions", headers={**headers, "Content-Type": "application/json"},
                           data="{not json", timeout=30)
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]


def test_streaming_answers_the_same_text(client):
    chunks = chat(client, max_tokens=12, temperature=1.0, seed=5, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == chat(client, max_tokens=12, temperature=1.0, seed=5).choices[0].message.content


# ---- jobs.synthesize's HTTP generator against this service (issue 20): a real OpenAI-compatible endpoint ----
def synth_config(tmp_path, base_url, *overrides):
    return load_config(TINY_CPU, [f"run.output_root={tmp_path}", "synth.generator=http", f"synth.endpoint={base_url}",
                                  f"synth.token_file={token_file_path(tmp_path)}", "synth.count=6",
                                  "synth.batch_size=3", "synth.max_task_tokens=24", "synth.max_response_tokens=24",
                                  "synth.retries=1", "synth.backoff_s=0.05", *overrides])


def token_file_path(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "key"
    if not path.exists():
        path.write_text(TOKEN)
    return path


def test_synthesis_over_http_is_the_same_whatever_the_concurrency(base_url, tmp_path):
    from jobs.synthesis.run import run

    one = run(synth_config(tmp_path / "one", base_url, "synth.concurrency=1"))
    eight = run(synth_config(tmp_path / "eight", base_url, "synth.concurrency=8"))
    records = one.candidates_file.read_text().splitlines()
    assert records == eight.candidates_file.read_text().splitlines()  # every request seeded by its candidate
    assert f"openai-compatible:{base_url}#{MODEL}" in records[0]
    # Some prompts (three long seed tasks) leave no room in the tiny model's 512-token context: the service answers
    # 400 naming max_tokens, which is final (not retried) and listed, never a crash of the job.
    failures = (one.output_dir / "failures.jsonl").read_text().splitlines()
    assert len(records) + len(failures) == 6 and records
    assert all("HTTP 400" in f and "max_tokens=24 does not fit" in f for f in failures)


def test_synthesis_refuses_a_wrong_key_before_generating(base_url, tmp_path):
    from jobs.synthesis.run import run

    cfg = synth_config(tmp_path, base_url)
    token_file_path(tmp_path).write_text("not-the-token")
    with pytest.raises(EndpointError, match="refused the API key"):
        run(cfg)
    assert not (tmp_path / "tiny-cpu" / "synthesize-shards").exists()


def test_requests_that_time_out_are_retried_then_listed(base_url, tmp_path):
    from jobs.synthesis.run import run

    cfg = synth_config(tmp_path, base_url, "synth.timeout_s=0.001", "synth.count=2", "synth.batch_size=2")
    with pytest.raises(EmptyDatasetError, match="no candidate was generated: 2 failed after retries"):
        run(cfg)
    out = cfg.run.output_dir("synthesize")
    failures = [line for line in (out / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 2 and all("APITimeoutError" in f and "after 2 tries" in f for f in failures)
    assert not (out / "candidates.jsonl").exists()
