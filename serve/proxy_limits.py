"""A body limit in Ray Serve's HTTP proxy, before it buffers anything.

Ray Serve 2.60's proxy reads every request body into an in-memory queue as fast as the client sends it
(`proxy_asgi_receive` in ray/serve/_private/proxy.py), whatever the replica behind it does; the replica's own limit
(serve/http_rules.py's BodySizeLimit) answers 413 but cannot stop the proxy holding the whole body. The one hook the
proxy offers is a callback that returns Starlette middlewares for its own ASGI app, named by the environment
variable RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH in the proxy's process. cluster/runtime.py sets it (and
RAYALIGN_PROXY_MAX_REQUEST_BYTES, the limit) for the embedded cluster; on a `ray start` cluster export both on
every node before `ray start` (README, "Start a cluster").

The middleware answers 413 at once when Content-Length is over the limit, without reading the body; a body without
a length is counted as it arrives and, past the limit, answered 413 (if nothing has answered yet) and cut off: the
proxy sees the client as gone and stops reading.
"""

from __future__ import annotations

import json
import os

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serve.proxy_limits:proxy_middlewares"
LIMIT_ENV = "RAYALIGN_PROXY_MAX_REQUEST_BYTES"
DEFAULT_LIMIT = 1_000_000  # serve.max_request_bytes' default


class ProxyBodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        openai = "/v1/" in scope.get("path", "")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send, f"request body of {int(declared)} bytes", openai)
        received, started, cut = 0, False, False

        async def guarded_send(message):
            nonlocal started
            if cut:  # we answered (or the client is cut off): nothing more goes out
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def bounded_receive():
            nonlocal received, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                if not started:
                    await self._reject(send, "request body", openai)
                cut = True
                return {"type": "http.disconnect"}
            return message

        await self.app(scope, bounded_receive, guarded_send)

    async def _reject(self, send, what: str, openai: bool) -> None:
        """413 in the error shape of the service behind: OpenAI's object under /v1/ (the policy service; an OpenAI
        client reads error.message and error.code), rayalign's {"error": text} elsewhere."""
        message = f"{what} exceeds the proxy's {self.max_bytes}-byte limit ({LIMIT_ENV})"
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": "request_too_large"}} if openai else {"error": message})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body.encode()})


def proxy_limit() -> int:
    text = os.environ.get(LIMIT_ENV, "")
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_LIMIT


def proxy_middlewares() -> list:
    """The callback Ray Serve's proxy calls at start (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyBodyLimit, max_bytes=proxy_limit())]
