"""The HTTP rules every rayalign service keeps, whatever its body format: a body-size limit, the bearer token,
4xx for bad input with a message naming the field, 5xx bodies that carry a request id only, and no open service
on a host other machines can reach.

Each service says how its error bodies look (`ErrorBody`): the reward service answers {"error": "..."}, the
policy service OpenAI's {"error": {"message", "type", "param", "code"}}, so an OpenAI client reads it.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Callable, Optional, Protocol

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.auth import LOOPBACK_HOSTS, resolve_token
from common.errors import ConfigError

log = logging.getLogger("rayalign.serve")
INTERNAL_ERROR = "internal error; the service log has the details"


class ErrorBody(Protocol):
    def __call__(self, status: int, message: str, param: Optional[str] = None,
                 request_id: Optional[str] = None) -> dict: ...


class ApiError(HTTPException):
    """A 4xx a route raises on purpose; `param` names the request field at fault."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(status, message, headers=headers)
        self.param = param


class BodySizeLimit:
    """ASGI middleware: 413 before the body is read when Content-Length is too large, and while streaming
    when a body without a length grows past the limit."""

    def __init__(self, app, max_bytes: int, error_body: ErrorBody):
        self.app, self.max_bytes, self.error_body = app, max_bytes, error_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(self.error_body(413, self._message()), status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the route's body read, so FastAPI's HTTP exception handling answers it.
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body exceeds the {self.max_bytes}-byte limit"


def bearer_guard(token: Callable[[], Optional[str]]):
    """A dependency that enforces the token (constant-time compare) and documents the scheme in OpenAPI.
    `token` is asked per request, so an app built on the driver still reads the replica's own token."""
    scheme = HTTPBearer(auto_error=False, description="needed when the service is started with a token")

    async def check(credentials: HTTPAuthorizationCredentials | None = Security(scheme)) -> None:
        expected = token()
        if expected is None:
            return
        if credentials is None:
            raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
            raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


def _field(location: tuple) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI, error_body: ErrorBody, service: str, field_status: int = 422) -> None:
    """Invalid JSON → 400, invalid fields → `field_status` naming each field, HTTP errors as raised, anything
    else → 500 whose body has a request id and no exception text (it can name files or data)."""

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            message = f"request body is not valid JSON: {errors[0].get('msg')}"
            return JSONResponse(error_body(400, message), status_code=400)
        message = "; ".join(f"{_field(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors)
        param = _field(tuple(errors[0].get("loc", ()))) if errors else None
        return JSONResponse(error_body(field_status, f"invalid request: {message}", param=param),
                            status_code=field_status)

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code >= 500:
            return internal_error(request, exc, error_body, service)
        return JSONResponse(error_body(exc.status_code, str(exc.detail), param=getattr(exc, "param", None)),
                            status_code=exc.status_code, headers=exc.headers)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        return internal_error(request, exc, error_body, service)

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def internal_error(request: Request, exc: Exception, error_body: ErrorBody, service: str) -> JSONResponse:
    """A 500 whose body has a request id and no exception text; the log has the rest under that id."""
    request_id = uuid.uuid4().hex[:12]
    log.error("%s failed on %s (request %s)", service, request.url.path, request_id, exc_info=exc)
    return JSONResponse(error_body(500, INTERNAL_ERROR, request_id=request_id), status_code=500)


class Exposure(Protocol):
    """The settings of a service section that decide who may reach it."""
    host: str
    auth_token_env: str
    auth_token_file: Optional[str]
    allow_unauthenticated: bool


def check_exposure(settings: Exposure, section: str, service: str) -> None:
    """A service other machines can reach must require a token, unless the config says otherwise. A configured
    token file is read here on any host, so a missing one fails before Ray starts."""
    token = resolve_token(settings.auth_token_env, settings.auth_token_file, f"{section}.auth_token_file")
    if token is None and settings.host not in LOOPBACK_HOSTS and not settings.allow_unauthenticated:
        raise ConfigError(f"{section}.host={settings.host} lets other machines reach the {service}, and no token is "
                          f"set: set {section}.auth_token_file (or the {settings.auth_token_env} variable), or "
                          f"{section}.allow_unauthenticated=true to serve it open")


def with_token(actor_options: dict, settings: Exposure, section: str) -> dict:
    """`actor_options` with the token (read here, where the service is started) in the replica's runtime
    environment, so a replica on any node of a cluster enforces it."""
    token = resolve_token(settings.auth_token_env, settings.auth_token_file, f"{section}.auth_token_file")
    if token is None:
        return actor_options
    runtime_env = dict(actor_options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), settings.auth_token_env: token}
    return {**actor_options, "runtime_env": runtime_env}


def start_http_proxy(host: str, port: int, section: str) -> None:
    """Start Serve's HTTP proxy on host:port, or refuse when this cluster's Serve already runs one elsewhere: Serve
    then keeps the running proxy and only logs that the new address is ignored, so a service checked as loopback-only
    could answer on another service's 0.0.0.0, at another port than the URL it printed."""
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": host, "port": port})
    running = _get_global_client().http_config
    if (running.host, running.port) != (host, port):
        raise ConfigError(f"Ray Serve on this cluster already has its HTTP proxy on {running.host}:{running.port}; "
                          f"{section}.host/port ask for {host}:{port}, which Serve would ignore: set them to "
                          f"{running.host} and {running.port} (the exposure check then applies to that address), "
                          f"or stop the running Serve first (serve shutdown)")
