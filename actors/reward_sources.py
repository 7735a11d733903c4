"""Where PPO's preference score ('rm' reward term) comes from, by registry (ppo.reward.rm_source):

  model    the trained reward model in its own Ray actor (actors/reward.py)
  http     the reward service over HTTP (serve/reward_app.py), with timeouts and retries; checked when
           built with an authenticated call, so an unreachable URL or a refused token fails the run (exit 2)
           before its roles start
  keyword  a programmatic score, the count of a chosen word: a real, cheap reward for demos and for tests
           that must show learning without a trained reward model
  filler   DELIBERATELY HACKABLE: pays for filler/jargon phrases (tokens inside them, capped), the way a
           flawed reward model pays for sounding thorough; it lets the reward-hacking monitor (filler density
           rising with the score) and the mixed reward's brakes be shown working on the real engine

Every source has `score(prompts: list[list[dict]], responses: list[str]) -> list[float]`.
"""

from __future__ import annotations

import re

from actors.algo.registry import Registry
from actors.algo.response_stats import filler_density, phrase_tokens
from actors.algo.text import text_tokens
from common.auth import resolve_token
from common.config import PPOConfig, RewardModelConfig, ServeConfig, resolve_path
from common.errors import ConfigError, RewardServiceError

REWARD_SOURCES: Registry = Registry("reward source")


class KeywordReward:
    """Score = occurrences of a whole word (case-insensitive), capped; prompts are ignored."""

    def __init__(self, word: str, cap: int):
        self.pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
        self.cap = cap

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        return [float(min(len(self.pattern.findall(text)), self.cap)) for text in responses]


class FillerReward:
    """Score = tokens of a response that lie inside filler phrases, capped; tokens and matching as the
    reward-hacking monitor's filler density (actors.algo.response_stats), so English and Chinese count alike."""

    def __init__(self, phrases: list[str], cap: int):
        self.phrases = phrase_tokens(phrases)
        self.cap = cap

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        return [float(min(round(filler_density(text, self.phrases) * len(text_tokens(text))), self.cap))
                for text in responses]


class ActorReward:
    """The reward model in a Ray actor of its own (the driver never holds its weights)."""

    def __init__(self, actor):
        self.actor = actor

    def score(self, prompts: list[list[dict]], responses: list[str]) -> list[float]:
        import ray

        from common.errors import RoleFailure

        try:
            return ray.get(self.actor.score.remote(prompts, responses))
        except ray.exceptions.RayError as exc:
            raise RoleFailure(f"reward actor failed in score: {str(exc).strip().splitlines()[-1]}") from exc


@REWARD_SOURCES.register("keyword")
def _keyword(ppo: PPOConfig, reward_model: RewardModelConfig, serve: ServeConfig, placement=None) -> KeywordReward:
    return KeywordReward(ppo.reward.rm_keyword, ppo.reward.rm_keyword_cap)


@REWARD_SOURCES.register("filler")
def _filler(ppo: PPOConfig, reward_model: RewardModelConfig, serve: ServeConfig, placement=None) -> FillerReward:
    return FillerReward(ppo.reward.rm_filler_phrases, ppo.reward.rm_filler_cap)


@REWARD_SOURCES.register("http")
def _http(ppo: PPOConfig, reward_model: RewardModelConfig, serve: ServeConfig, placement=None):
    from actors.reward_client import RewardClient

    reward = ppo.reward
    # The token the service itself would read: serve.auth_token_file, else the variable serve.auth_token_env names.
    client = RewardClient(reward.reward_url, timeout_s=reward.reward_timeout_s, retries=reward.reward_retries,
                          token=resolve_token(serve.auth_token_env, serve.auth_token_file),
                          max_pairs=serve.max_pairs_per_request)
    try:
        client.check_authorized()
    except RewardServiceError as exc:
        raise ConfigError(f"ppo.reward.reward_url: {exc}") from None
    return client


@REWARD_SOURCES.register("model")
def _model(ppo: PPOConfig, reward_model: RewardModelConfig, serve: ServeConfig, placement=None) -> ActorReward:
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from actors.reward import RewardModel

    if not ppo.reward.rm_path:
        raise ConfigError("ppo.reward.rm_path must name a trained reward model folder when ppo.reward.rm_source=model")
    # Frozen weights from the folder: Ray can rebuild a dead actor and retry the call without losing anything.
    restarts = ppo.stateless_max_restarts
    options = {"num_cpus": ppo.cpus_per_actor, "num_gpus": ppo.gpus_per_actor, "max_restarts": restarts,
               "max_task_retries": restarts}
    if placement is not None:
        group, bundle = placement
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, bundle)
    # Truncation and batch size from reward_model, as the reward service reads them: both sources score alike.
    actor = ray.remote(RewardModel).options(**options).remote(str(resolve_path(ppo.reward.rm_path)),
                                                              reward_model.max_length, reward_model.score_batch_size)
    return ActorReward(actor)


def make_reward_source(ppo: PPOConfig, reward_model: RewardModelConfig, serve: ServeConfig, placement=None):
    """The source ppo.reward.rm_source names, built from the sections it reads (reward_model: truncation and
    batch size of the model's scoring; serve: the service's token)."""
    return REWARD_SOURCES.get(ppo.reward.rm_source)(ppo, reward_model, serve, placement)
