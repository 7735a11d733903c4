"""The serving sections: the reward model (serve) and a trained policy (serve_policy) on Ray Serve over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common.configlib import param
from common.errors import ConfigError


@dataclass(frozen=True)
class ServeConfig:
    model_path: Optional[str] = param(None, "reward model folder to serve (unset: the one this config trains, "
                                            "<output_root>/<name>/reward_model/model)")
    host: str = param("127.0.0.1", "HTTP bind address")
    port: int = param(8000, "HTTP port", gt=0, lt=65536)
    route_prefix: str = param("/", "URL prefix of the reward app")
    app_name: str = param("reward", "Ray Serve application name")
    num_replicas: int = param(1, "reward-model replicas (fixed count; see autoscaling)", gt=0)
    autoscaling: bool = param(False, "scale replicas between min_replicas and max_replicas by load "
                                     "instead of keeping num_replicas")
    min_replicas: int = param(1, "autoscaling: fewest replicas", ge=0)
    max_replicas: int = param(4, "autoscaling: most replicas", gt=0)
    target_ongoing_requests: float = param(16.0, "autoscaling: requests in flight per replica to aim for", gt=0)
    cpus_per_replica: float = param(1.0, "CPUs reserved per replica", gt=0)
    node_resource: Optional[str] = param(None, "a custom resource some nodes declare (ray start "
                                               "--resources='{\"serve_node\": 1}'): replicas go only to those nodes")
    max_ongoing_requests: int = param(128, "requests a replica accepts at once; must be >= max_batch_size or "
                                           "batches can never fill", gt=0)
    max_batch_size: int = param(32, "requests batched together by @serve.batch", gt=0)
    batch_wait_timeout_s: float = param(0.01, "how long a batch waits to fill", ge=0.0)
    max_request_bytes: int = param(1_000_000, "larger request bodies get 413", gt=0)
    max_pairs_per_request: int = param(256, "a /score or /get_reward request with more (prompt, response) pairs "
                                            "gets 413, so one large request cannot hold up the small ones batched "
                                            "with it; rayalign's reward client (ppo.reward.reward_url) sends larger "
                                            "batches in parts of this size at once, which the service batches and "
                                            "spreads over its replicas", gt=0)
    auth_token_env: str = param("RAYALIGN_REWARD_TOKEN", "env var holding the bearer token (unset var: no auth)")
    auth_token_file: Optional[str] = param(None, "file holding the bearer token (wins over auth_token_env)")
    allow_unauthenticated: bool = param(False, "start on a host other machines can reach (serve.host not loopback) "
                                               "without a token; off: that is refused")

    def check(self) -> None:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"max_ongoing_requests ({self.max_ongoing_requests}) must be >= max_batch_size "
                              f"({self.max_batch_size})")
        if self.autoscaling and self.min_replicas > self.max_replicas:
            raise ConfigError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")


@dataclass(frozen=True)
class PolicyServeConfig:
    """A trained policy behind an OpenAI-compatible API (serve/policy_app.py), on Ray Serve LLM."""
    model_path: Optional[str] = param(None, "Hugging Face model folder to serve (jobs.serve_policy --model sets it)")
    model_id: Optional[str] = param(None, "the model name clients send and /v1/models lists (unset: the folder's name)")
    chat_template: Optional[str] = param(None, "Jinja chat template for a tokenizer that has none (unset: rayalign's "
                                               "default, the one training used for such a tokenizer)")
    max_model_len: Optional[int] = param(None, "context length in tokens, prompt + reply (unset: the model's "
                                               "max_position_embeddings)", gt=0)
    dtype: str = param("float32", "vLLM weight dtype (float32 on CPU; bfloat16 on a GPU)")
    kv_cache_gib: int = param(1, "vLLM KV-cache size on CPU (VLLM_CPU_KVCACHE_SPACE)", gt=0)
    host: str = param("127.0.0.1", "HTTP bind address")
    port: int = param(8001, "HTTP port (8000 is the reward service's default)", gt=0, lt=65536)
    route_prefix: str = param("/", "URL prefix of the app; the OpenAI routes sit under <prefix>/v1")
    app_name: str = param("policy", "Ray Serve application name")
    num_replicas: int = param(1, "engine replicas (each holds the whole model)", gt=0)
    cpus_per_replica: float = param(1.0, "CPUs reserved per engine replica (its engine processes compute there)", gt=0)
    router_cpus: float = param(0.0, "CPUs reserved for the OpenAI router replica (it checks, counts prompt tokens and "
                                    "relays; the engine computes)", ge=0)
    max_ongoing_requests: int = param(64, "requests an engine replica accepts at once", gt=0)
    max_request_bytes: int = param(1_000_000, "larger request bodies get 413", gt=0)
    auth_token_env: str = param("RAYALIGN_POLICY_TOKEN", "env var holding the bearer token (unset var: no auth)")
    auth_token_file: Optional[str] = param(None, "file holding the bearer token (wins over auth_token_env)")
    allow_unauthenticated: bool = param(False, "start on a host other machines can reach (serve_policy.host not "
                                               "loopback) without a token; off: that is refused")
