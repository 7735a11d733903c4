"""Ray Serve deployment of a trained reward model behind FastAPI.

    POST /score       {"prompts": [str | chat turns], "responses": [str]}  → {"scores": [float]}
    POST /get_reward  {"query": [str], "prompts": [str]?, "labels": [...]?} → {"rewards": [float], "scores": [float]}
                      (the remote reward-model format of OpenRLHF-style trainers, so they can point here unchanged)
    GET  /healthz     liveness + which model is loaded
    GET  /stats       this replica's request and batch-size counts
    GET  /openapi.json, /docs

Concurrent requests are merged by @serve.batch into one model pass (max_batch_size / batch_wait_timeout_s
from ServeConfig); tokenisation happens per request, before batching, so a bad request fails alone.
Scoring routes and /stats need `Authorization: Bearer <token>` when a token is configured
(ServeConfig.auth_token_file, or the env var named by auth_token_env where the service is started); the token
travels with the deployment (its runtime environment), so a replica on any node of a cluster enforces it, and a
service on a host other machines can reach refuses to start without one (unless serve.allow_unauthenticated).
/healthz answers without a token and names no paths; a 5xx body carries a request id the log has the detail for.
Bodies over max_request_bytes and requests of more than max_pairs_per_request pairs get 413, invalid requests
400/422 with a readable "error"; nothing a client sends produces a bare 500.

Started by `python -m jobs.serve_rm --config ...`, or `serve run serve/serve_config.yaml` / `serve deploy`,
whose `import_path: serve.reward_app:build_app` takes `config` (a rayalign YAML) and dotted overrides as args.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import Depends, FastAPI
from ray import serve

from actors.reward import Encoded, RewardModel
from common.config import Config, resolve_path
from common.configlib import apply_overrides, build, read_yaml
from common.errors import ConfigError
from common.model_dir import check_model_dir
from serve import http_rules
from serve.http_rules import BodySizeLimit, bearer_guard, install_error_handlers, with_token
from serve.schemas import ErrorResponse, GetRewardRequest, GetRewardResponse, Health, ScoreRequest, ScoreResponse, Stats

log = logging.getLogger("rayalign.serve")
ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 413, 422)}


@dataclass(frozen=True)
class ReplicaSettings:
    """What one replica needs, as plain values (deployment arguments travel through the Serve controller)."""
    model_path: str
    max_length: int
    score_batch_size: int
    max_batch_size: int
    batch_wait_timeout_s: float
    max_request_bytes: int
    max_pairs_per_request: int
    auth_token_env: str  # the replica reads its token here: the deployment's runtime environment sets it

    @classmethod
    def from_config(cls, cfg: Config) -> "ReplicaSettings":
        return cls(model_path=str(served_model_path(cfg)), max_length=cfg.reward_model.max_length,
                   score_batch_size=cfg.reward_model.score_batch_size, max_batch_size=cfg.serve.max_batch_size,
                   batch_wait_timeout_s=cfg.serve.batch_wait_timeout_s,
                   max_request_bytes=cfg.serve.max_request_bytes,
                   max_pairs_per_request=cfg.serve.max_pairs_per_request, auth_token_env=cfg.serve.auth_token_env)


def served_model_path(cfg: Config) -> Path:
    """serve.model_path, else the reward model this config trains (<output_root>/<name>/reward_model/model)."""
    return resolve_path(cfg.serve.model_path) if cfg.serve.model_path else cfg.run.output_dir("reward_model") / "model"


def error_body(status: int, message: str, param: str | None = None, request_id: str | None = None) -> dict:
    """The reward service's error shape: {"error": "..."} (and the request id of a 5xx)."""
    return {"error": message, **({"request_id": request_id} if request_id else {})}


def encoded_chats(model: RewardModel, chats: list[list[dict]], responses: list[str]) -> list[Encoded]:
    """The request's chats encoded as in training. A chat the model's own template refuses (Mistral's and Gemma's
    roles that must alternate, Gemma's missing system role) is the request's fault: 422 naming the first such
    prompt, not a 500 that clients retry."""
    from jinja2 import TemplateError

    try:
        return model.encode_chats(chats, responses)
    except TemplateError:
        for index, (chat, response) in enumerate(zip(chats, responses)):
            try:
                model.encode_chats([chat], [response])
            except TemplateError as exc:
                raise http_rules.ApiError(422, f"invalid request: prompts.{index}: the reward model's chat "
                                               f"template refuses this chat: {exc}", param=f"prompts.{index}") from exc
        raise


def build_http_app(service: "RewardService") -> FastAPI:
    """The FastAPI app of one replica (built on the replica, so limits and token come from its settings)."""
    app = FastAPI(title="rayalign reward model", version="1", description=__doc__.split("\n\n")[0])
    app.add_middleware(BodySizeLimit, max_bytes=service.settings.max_request_bytes, error_body=error_body)
    install_error_handlers(app, error_body, "reward service")
    authorized = [Depends(bearer_guard(lambda: service.token))]

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", model=Path(service.settings.model_path).name,
                      input_format=service.model.input_format)

    @app.get("/stats", response_model=Stats, dependencies=authorized, responses=ERROR_RESPONSES)
    async def stats() -> Stats:
        return Stats(requests=service.requests, batches=sum(service.batch_sizes.values()),
                     batch_sizes=dict(service.batch_sizes))

    @app.post("/score", response_model=ScoreResponse, dependencies=authorized, responses=ERROR_RESPONSES)
    async def score(body: ScoreRequest) -> ScoreResponse:
        check_pairs(len(body.responses), service.settings.max_pairs_per_request)
        # In a worker thread, like the model's pass: a large request's tokenising leaves /healthz answering.
        items = await asyncio.to_thread(encoded_chats, service.model, body.chats(), body.responses)
        return ScoreResponse(scores=await service.score_batched(items))

    @app.post("/get_reward", response_model=GetRewardResponse, dependencies=authorized, responses=ERROR_RESPONSES)
    async def get_reward(body: GetRewardRequest) -> GetRewardResponse:
        check_pairs(len(body.query), service.settings.max_pairs_per_request)
        scores = await service.score_batched(service.model.encode_queries(body.query, body.prompts))
        return GetRewardResponse(rewards=scores, scores=scores)

    return app


def check_pairs(pairs: int, limit: int) -> None:
    """413 for a request of more pairs than serve.max_pairs_per_request: @serve.batch merges whole requests, so
    one of 10,000 pairs would hold every small request batched with it until all of it is scored."""
    if pairs > limit:
        raise http_rules.ApiError(413, f"{pairs} pairs in one request; this service scores at most {limit} per "
                                       f"request (serve.max_pairs_per_request): send them in several requests, "
                                       f"which it batches together")


@serve.deployment
@serve.ingress()
class RewardService:
    def __init__(self, settings: dict):
        self.settings = ReplicaSettings(**settings)
        self.model = RewardModel(self.settings.model_path, self.settings.max_length, self.settings.score_batch_size)
        self.token = os.environ.get(self.settings.auth_token_env) or None
        if self.token is None:
            log.warning("reward service runs without authentication (no token in %s)", self.settings.auth_token_env)
        self.score_batched.set_max_batch_size(self.settings.max_batch_size)
        self.score_batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        self.requests = 0
        self.batch_sizes: Counter[int] = Counter()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def score_batched(self, requests: list[list[Encoded]]) -> list[list[float]]:
        """Concurrent requests' inputs in one model pass; each request gets its own slice back."""
        self.requests += len(requests)
        self.batch_sizes[len(requests)] += 1
        flat = [item for items in requests for item in items]
        # In a worker thread, so /healthz and new requests are served while the model runs.
        scores = await asyncio.to_thread(self.model.score_encoded, flat)
        sliced, start = [], 0
        for items in requests:
            sliced.append(scores[start:start + len(items)])
            start += len(items)
        return sliced


NODE_RESOURCE_SHARE = 0.001


def deployment_options(cfg: Config) -> dict:
    """Replicas (fixed or autoscaled), CPUs, the nodes they may use and admission limit from ServeConfig."""
    options = {"ray_actor_options": {"num_cpus": cfg.serve.cpus_per_replica},
               "max_ongoing_requests": cfg.serve.max_ongoing_requests}
    if cfg.serve.node_resource:
        # A sliver of the resource: it only marks the nodes, however many replicas share one.
        options["ray_actor_options"]["resources"] = {cfg.serve.node_resource: NODE_RESOURCE_SHARE}
    if cfg.serve.autoscaling:
        options["autoscaling_config"] = {"min_replicas": cfg.serve.min_replicas,
                                         "max_replicas": cfg.serve.max_replicas,
                                         "target_ongoing_requests": cfg.serve.target_ongoing_requests}
    else:
        options["num_replicas"] = cfg.serve.num_replicas
    return options


def reward_application(cfg: Config):
    """The bound Serve application for `cfg` (fails here, on the caller's side, if the model folder or the
    token file is missing). The token is read here, where the service is started, and travels in every
    replica's runtime environment, whichever node the replica lands on."""
    check_model_dir(served_model_path(cfg), what="serve.model_path")
    settings = ReplicaSettings.from_config(cfg)
    options = deployment_options(cfg)
    options["ray_actor_options"] = with_token(options["ray_actor_options"], cfg.serve, "serve")
    return RewardService.options(**options).bind(asdict(settings))


def check_exposure(cfg: Config) -> None:
    """A service other machines can reach must require a token, unless the config says otherwise."""
    http_rules.check_exposure(cfg.serve, "serve", "reward service")


def config_from_args(args: dict) -> Config:
    """`config` (a rayalign YAML) plus dotted keys as overrides; string values (from `serve run` key=value
    arguments) are parsed as YAML like command-line overrides, typed values (from a Serve config file) are
    taken as they are."""
    args = dict(args)
    config_path = args.pop("config", None)
    data = read_yaml(resolve_path(config_path)) if config_path else {}
    typed = {key: value for key, value in args.items() if not isinstance(value, str)}
    data = apply_overrides(data, [f"{key}={value}" for key, value in args.items() if key not in typed])
    return build(Config, apply_overrides(data, typed))


# Under `serve run` / `serve deploy` Serve's proxy is already bound (http_options of the Serve config file or
# `serve run --port`) before the app is built, so these keys could only be silently ignored.
PROXY_KEYS = ("serve.host", "serve.port")


def build_app(args: dict):
    """Application builder for `serve run` / `serve deploy` (import_path: serve.reward_app:build_app)."""
    ignored = [key for key in PROXY_KEYS if key in args]
    if ignored:
        raise ConfigError(f"{', '.join(ignored)} cannot be set as application arguments: under serve run / serve "
                          f"deploy the HTTP address comes from http_options in the Serve config file (or serve "
                          f"run's --host/--port); set it there, or start the service with python -m jobs.serve_rm")
    return reward_application(config_from_args(args))


def deploy(cfg: Config) -> str:
    """Start Serve's HTTP proxy on serve.host:serve.port, deploy the app, return its base URL."""
    check_exposure(cfg)
    http_rules.start_http_proxy(cfg.serve.host, cfg.serve.port, "serve")
    serve.run(reward_application(cfg), name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix)
    return f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"
