"""The reward service on real Ray Serve over real HTTP on 127.0.0.1: scores equal the in-process model's,
the OpenRLHF-style /get_reward round-trips, bad requests get 4xx with a message, concurrent requests are
batched, and the client retries with backoff then names the URL."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from actors import reward
from actors.chat import render
from actors.reward_client import RewardClient
from common.config import load_config
from common.errors import ConfigError, RewardServiceError
from tests.conftest import TINY_CPU
from tests.helpers import free_port
from tests.reward_helpers import make_reward_dir

pytestmark = [pytest.mark.ray]
TOKEN = "s3cret-token"
MAX_BATCH = 8
MAX_BYTES = 20_000
MAX_PAIRS = 6
PROMPTS = ["Name a colour.", [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hi."}],
           "Give me three words.", "What is 2 + 2?", [{"role": "user", "content": "Tell me a story."}]]
RESPONSES = ["Blue.", "Hi there, friend!", "Go away, idiot.", "Four.", "Once upon a time there was a cat."]


def as_chat(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return make_reward_dir(tmp_path_factory.mktemp("rm") / "model")


@pytest.fixture(scope="module")
def local_model(reward_dir):
    return reward.RewardModel(reward_dir, max_length=256)


@pytest.fixture(scope="module")
def url(ray_session, reward_dir, tmp_path_factory):
    from ray import serve

    from serve import reward_app

    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(TOKEN)
    cfg = load_config(TINY_CPU, [f"serve.model_path={reward_dir}", f"serve.port={free_port()}",
                                 f"serve.auth_token_file={token_file}", f"serve.max_batch_size={MAX_BATCH}",
                                 "serve.batch_wait_timeout_s=0.25", f"serve.max_request_bytes={MAX_BYTES}",
                                 f"serve.max_pairs_per_request={MAX_PAIRS}",
                                 "reward_model.max_length=256"])
    try:
        yield reward_app.deploy(cfg)
    finally:
        serve.shutdown()


def post(url: str, path: str, body=None, token: str | None = TOKEN, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}{path}", json=body, headers=headers, timeout=60, **kwargs)


def stats(url: str) -> dict:
    return requests.get(f"{url}/stats", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()


def test_scores_over_http_equal_the_in_process_model(url, local_model):
    response = post(url, "/score", {"prompts": PROMPTS, "responses": RESPONSES})
    assert response.status_code == 200, response.text
    expected = local_model.score([as_chat(p) for p in PROMPTS], RESPONSES)
    assert response.json()["scores"] == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 0.1  # the model really distinguishes the replies


def test_get_reward_round_trips_the_openrlhf_format(url, local_model):
    tokenizer = local_model.tokenizer
    prompts = [render(tokenizer, as_chat(p), add_generation_prompt=True) for p in PROMPTS]
    queries = [prompt + " " + response for prompt, response in zip(prompts, RESPONSES)]  # as a policy generates
    response = post(url, "/get_reward", {"query": queries, "prompts": prompts, "labels": [None] * len(queries)})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = local_model.score([as_chat(p) for p in PROMPTS], RESPONSES)
    assert body["rewards"] == pytest.approx(expected, abs=1e-5)
    assert body["scores"] == body["rewards"]
    assert post(url, "/get_reward", {"query": queries[:1]}).json()["rewards"] == pytest.approx(expected[:1], abs=1e-5)


@pytest.mark.parametrize("path, raw, status, fragment", [
    ("/score", "{not json", 400, "not valid JSON"),
    ("/score", "[1, 2]", 422, "valid dictionary"),
    ("/score", json.dumps({"prompts": [1], "responses": ["a"]}), 422, "prompts.0"),
    ("/score", json.dumps({"prompts": ["a"], "responses": "a"}), 422, "responses"),
    ("/score", json.dumps({"prompts": ["a", "b"], "responses": ["a"]}), 422, "same length"),
    ("/score", json.dumps({"prompts": [], "responses": []}), 422, "at least 1 item"),
    ("/score", json.dumps({"prompts": [[{"role": "user"}]], "responses": ["a"]}), 422, "content"),
    ("/get_reward", json.dumps({"query": []}), 422, "at least 1 item"),
    ("/get_reward", json.dumps({"query": ["a", "b"], "prompts": ["a"]}), 422, "same length"),
    ("/get_reward", json.dumps({"queries": ["a"]}), 422, "query: Field required"),
    ("/score", json.dumps({"prompts": ["a"] * 7, "responses": ["b"] * 7}), 413, "7 pairs in one request; this "
                                                                                "service scores at most 6"),
    ("/get_reward", json.dumps({"query": ["a"] * 7}), 413, "at most 6 per request (serve.max_pairs_per_request)"),
])
def test_invalid_requests_get_4xx_with_a_message(url, path, raw, status, fragment):
    response = requests.post(f"{url}{path}", data=raw, timeout=60,
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_oversize_bodies_get_413(url):
    big = {"prompts": ["x" * MAX_BYTES], "responses": ["a"]}
    response = post(url, "/score", big)
    assert response.status_code == 413 and "20000-byte limit" in response.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"prompts": ["'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"], "responses": ["a"]}'

    streamed = requests.post(f"{url}/score", data=chunks(), timeout=60,
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]


def test_missing_or_wrong_token_gets_401(url):
    body = {"prompts": ["a"], "responses": ["b"]}
    missing = post(url, "/score", body, token=None)
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["error"]
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = post(url, "/get_reward", {"query": ["a"]}, token="not-the-token")
    assert wrong.status_code == 401 and "invalid bearer token" in wrong.json()["error"]
    assert requests.get(f"{url}/stats", timeout=30).status_code == 401  # what it has served is not public either
    health = requests.get(f"{url}/healthz", timeout=30).json()  # liveness needs no token, and names no path
    assert health["status"] == "ok" and "/" not in health["model"]


def test_openapi_schema_documents_the_endpoints_and_auth(url):
    schema = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert {"/score", "/get_reward", "/healthz", "/stats"} <= set(schema["paths"])
    assert "ScoreRequest" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_concurrent_requests_are_batched(url):
    before = stats(url)
    clients = 2 * MAX_BATCH
    start = threading.Barrier(clients)
    statuses: list[int] = []

    def one_request(index: int) -> None:
        start.wait()
        statuses.append(post(url, "/score", {"prompts": [PROMPTS[index % 5]], "responses": [RESPONSES[index % 5]]})
                        .status_code)

    threads = [threading.Thread(target=one_request, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = stats(url)
    assert statuses == [200] * clients
    new_batches = {int(size): count - before["batch_sizes"].get(size, 0)
                   for size, count in after["batch_sizes"].items() if count > before["batch_sizes"].get(size, 0)}
    assert sum(size * count for size, count in new_batches.items()) == clients  # every request in exactly one batch
    assert max(new_batches) > 1, new_batches  # requests that arrived together shared a model pass
    assert max(new_batches) <= MAX_BATCH, new_batches


def test_client_scores_like_the_service(url, local_model):
    """In parts of at most max_pairs sent at once (here 2 + 2 + 1), the scores joined in order; a client whose
    parts are larger than the service takes is told so by the service."""
    before = stats(url)["requests"]
    with RewardClient(url, timeout_s=30, retries=1, token=TOKEN, max_pairs=2) as client:
        scores = client.score(PROMPTS, RESPONSES)
        rewards = client.get_reward(["User: hi\nAssistant: hello"] * 3)
    assert stats(url)["requests"] - before == 3 + 2
    assert scores == pytest.approx(local_model.score([as_chat(p) for p in PROMPTS], RESPONSES), abs=1e-5)
    assert len(rewards) == 3 and rewards[0] == pytest.approx(rewards[2], abs=1e-5)
    with RewardClient(url, timeout_s=30, retries=1, token=TOKEN, max_pairs=MAX_PAIRS + 1) as client:
        with pytest.raises(RewardServiceError, match=r"HTTP 413: 7 pairs in one request"):
            client.score(PROMPTS + PROMPTS[:2], RESPONSES + RESPONSES[:2])


def test_client_fails_at_once_on_a_rejected_request(url):
    client = RewardClient(url, timeout_s=30, retries=3, token="wrong", backoff_s=5.0)
    started = time.monotonic()
    with pytest.raises(RewardServiceError, match=r"rejected the request \(HTTP 401: invalid bearer token\)"):
        client.score(["a"], ["b"])
    assert time.monotonic() - started < 5.0  # no backoff for a request that cannot succeed


def test_client_retries_with_backoff_then_names_the_url():
    closed = f"http://127.0.0.1:{free_port()}"
    client = RewardClient(closed, timeout_s=2, retries=2, backoff_s=0.2)
    started = time.monotonic()
    with pytest.raises(RewardServiceError) as failure:
        client.score(["a"], ["b"])
    assert time.monotonic() - started >= 0.2 + 0.4  # two backoffs: 0.2 s then 0.4 s
    assert f"reward service at {closed}/score failed after 3 attempts (2 retries" in str(failure.value)
    assert "ConnectionError" in str(failure.value)


def test_ppo_reads_the_token_as_the_service_does_and_a_refused_one_stops_it_before_its_roles(url, tmp_path):
    """The PPO client takes serve.auth_token_file like the service, and its start-up check is an authenticated
    call: a wrong token is one ConfigError (exit 2) before any role is reserved or started."""
    from actors.reward_sources import make_reward_source

    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text(TOKEN + "\n")
    wrong.write_text("not-the-token")

    def source(token_file):
        cfg = load_config(TINY_CPU, ["ppo.reward.rm_source=http", f"ppo.reward.reward_url={url}",
                                     "ppo.reward.reward_retries=0", f"serve.auth_token_file={token_file}"])
        return make_reward_source(cfg.ppo, cfg.reward_model, cfg.serve)

    assert len(source(right).score([[{"role": "user", "content": "a"}]], ["b"])) == 1
    with pytest.raises(ConfigError, match=rf"^ppo.reward.reward_url: reward service at {url} refused the token "
                                          rf"\(HTTP 401: invalid bearer token\)$"):
        source(wrong)


# ---- fuzzing from the service's own OpenAPI schema (schemathesis) -------------------------------------------
FUZZ_EXAMPLES = 25  # per operation and generation mode: bounded in count (and, with the batch wait, in time)


def test_fuzzed_requests_never_get_a_5xx_and_every_4xx_says_why(url):
    """Valid and invalid requests generated by schemathesis from /openapi.json, for every operation, with the token
    (401 is covered above): no 5xx, and every 4xx is JSON with an "error" message."""
    import hypothesis
    import hypothesis.errors
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)
    ran, statuses = 0, set()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                nonlocal ran
                ran += 1
                response = case.call(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
                statuses.add(response.status_code)
                assert response.status_code < 500, (case.path, case.body, response.text[:300])
                if response.status_code >= 400:
                    assert response.json()["error"], (case.path, case.body, response.text[:300])

            try:
                fuzz()
            except hypothesis.errors.Unsatisfiable:  # nothing to make invalid: a GET without parameters
                assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET", operation.label
    assert ran >= 4 * FUZZ_EXAMPLES and any(400 <= s < 500 for s in statuses) and 200 in statuses, (ran, statuses)


def test_the_service_still_answers_after_the_fuzzing(url):
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    assert post(url, "/score", {"prompts": ["a"], "responses": ["b"]}).status_code == 200


def test_the_proxy_refuses_a_declared_100_mb_body_before_reading_it(url):
    """Ray Serve's proxy would buffer a whole body before the replica's limit sees it; the proxy's own middleware
    (serve/proxy_limits.py, set for every worker by cluster/runtime.py) answers 413 from the headers alone: the
    client sends 100 MB of Content-Length and 10 bytes, and the answer comes at once."""
    import socket
    from urllib.parse import urlparse

    target = urlparse(url)
    with socket.create_connection((target.hostname, target.port), timeout=10) as conn:
        conn.sendall(f"POST {target.path}/score HTTP/1.1\r\nHost: {target.hostname}\r\n"
                     f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 100000000\r\n\r\n{{\"prompts\"".encode())
        reply = b""
        while chunk := conn.recv(65536):  # the proxy closes the connection after its answer
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413"), reply[:400]
    assert "exceeds the proxy's 1000000-byte limit (RAYALIGN_PROXY_MAX_REQUEST_BYTES)" in reply


def test_a_second_service_asking_for_another_address_is_refused_not_moved(url):
    """Serve keeps the proxy it runs and only logs that a new address is ignored: a service checked as loopback-only
    would have answered on the running proxy's address instead."""
    from serve.http_rules import start_http_proxy

    running = url.split("//")[1].split("/")[0]
    other = free_port()
    with pytest.raises(ConfigError, match=rf"already has its HTTP proxy on {running}; serve_policy.host/port ask for "
                                          rf"127.0.0.1:{other}, which Serve would ignore"):
        start_http_proxy("127.0.0.1", other, "serve_policy")
    host, port = running.split(":")
    start_http_proxy(host, int(port), "serve")  # the running address itself is fine
