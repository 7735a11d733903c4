"""The body limit that runs inside Ray Serve's HTTP proxy (serve/proxy_limits.py), driven through the ASGI
interface it is called with: 413 before any body is read when Content-Length is too large, and a body without a
length cut off once past the limit."""

from __future__ import annotations

import asyncio
import json

from serve.proxy_limits import LIMIT_ENV, ProxyBodyLimit, proxy_limit, proxy_middlewares


class Echo:
    """An ASGI app that reads the whole body and answers 200 with its length (as the proxy forwards it)."""

    def __init__(self):
        self.read = 0

    async def __call__(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            self.read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.read).encode()})


def call(app, headers: list, chunks: list[bytes]):
    pulled, sent = [], []

    async def receive():
        index = len(pulled)
        pulled.append(index)
        if index >= len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[index], "more_body": index < len(chunks) - 1}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "headers": headers}, receive, send))
    return pulled, sent


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_read():
    inner = Echo()
    pulled, sent = call(ProxyBodyLimit(inner, 100), [(b"content-length", b"100000000")], [b"x" * 50] * 3)
    assert pulled == [] and inner.read == 0  # the body was never read
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"] == (f"request body of 100000000 bytes exceeds the proxy's 100-byte "
                                                    f"limit ({LIMIT_ENV})")


def test_a_streamed_body_is_cut_off_past_the_limit_and_answered_once():
    inner = Echo()
    pulled, sent = call(ProxyBodyLimit(inner, 100), [], [b"x" * 40] * 10)
    assert len(pulled) == 3  # 40 + 40 + 40 > 100: the third chunk is the last one read
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] and sent[0]["status"] == 413


def test_bodies_within_the_limit_pass_untouched(monkeypatch):
    inner = Echo()
    pulled, sent = call(ProxyBodyLimit(inner, 100), [(b"content-length", b"80")], [b"x" * 40, b"y" * 40])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"80"
    monkeypatch.setenv(LIMIT_ENV, "2048")
    assert proxy_limit() == 2048 and proxy_middlewares()[0].kwargs == {"max_bytes": 2048}
    monkeypatch.setenv(LIMIT_ENV, "lots")
    assert proxy_limit() == 1_000_000  # not a positive integer: the default


def test_openai_routes_get_openais_error_shape():
    """The policy service's clients are OpenAI clients: error.message and error.code, not a bare string."""
    pulled, sent = [], []

    async def receive():
        pulled.append(1)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions", "headers": [(b"content-length", b"5000")]}
    asyncio.run(ProxyBodyLimit(Echo(), 100)(scope, receive, send))
    assert sent[0]["status"] == 413 and pulled == []
    assert json.loads(sent[1]["body"])["error"] == {
        "message": f"request body of 5000 bytes exceeds the proxy's 100-byte limit ({LIMIT_ENV})",
        "type": "invalid_request_error", "param": None, "code": "request_too_large"}
