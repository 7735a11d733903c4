"""PPO's role actors: which roles a run needs, their placement groups, and the actors themselves, each built from
the config sections it reads (`role_args`), never from the whole config.

    rollout    vLLM engines (or the Hugging Face stand-in): replaced in their bundle when one dies
    policy     DeepSpeed ZeRO ranks in one process group
    value      DeepSpeed ZeRO ranks in their own process group (gae only)
    reference  a frozen copy of the starting policy (not for LoRA policies with ppo.reference=adapter_disabled)
    reward     the reward source: a reward-model actor, the HTTP service or a programmatic score
    functions  plug-in reward functions (ppo.reward.functions), in a worker of their own
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from actors.environments import Environments
from actors.fault import engine_group, record_fault
from actors.group import RoleGroup
from actors.policy import PolicyRole
from actors.ppo_weight_sync import policy_buckets
from actors.reference import ReferenceModel
from actors.reward_functions import RewardFunctions
from actors.reward_sources import make_reward_source
from actors.rollout.engines import rollout_engine_class
from actors.role_start import Launch, all_fit, launch_in_turn, loading_budget
from actors.roster import write_roster
from actors.threads import ThreadPlan, node_cores
from actors.value import ValueRole
from cluster.placement import RoleResources, bundles_on_node, release, reserve_roles
from common.config import Config

log = logging.getLogger("rayalign.ppo")


def separate_reference(cfg: Config) -> bool:
    """A reference actor of its own, unless a LoRA policy serves as its own reference with adapters off."""
    return cfg.ppo.reference == "copy" or not cfg.lora.enabled


OBSERVATION_MARKUP_TOKENS = 32  # role headers and end-of-turn markers around one observation


def thread_plans(cfg: Config) -> dict[str, ThreadPlan]:
    """Each computing role's threads: ppo.role_threads, else the node's cores over the ranks busy at once in the
    phase of each call (phase 3: policy old log-probs beside the reference's; phase 4: the value model alone;
    phase 6: policy and value ranks train together; phase 1 and the held-out evaluation: the rollout engines, and
    phase 7 their loads). With ppo.async_rollouts the engines sample the next batch all through phases 2-7, so they
    count as busy beside every phase, and every other rank beside theirs."""
    ppo = cfg.ppo
    value = ppo.value_workers if ppo.uses_value_model else 0
    reference = 1 if separate_reference(cfg) else 0
    engines = ppo.rollout.num_engines if ppo.async_rollouts else 0
    phase3 = ppo.policy_workers + reference + engines
    phase4 = value + engines if value else 0
    phase6 = ppo.policy_workers + value + engines
    sampling = ppo.rollout.num_engines + (ppo.policy_workers + value + reference if ppo.async_rollouts else 0)
    sharing = {"policy": {"old_logprobs": phase3, "logprobs": phase3, "train": phase6},
               "value": {"values": phase4, "train": phase6}, "reference": {"logprobs": phase3},
               "rollout": {"generate": sampling, "load_weights": sampling}}
    return {role: ThreadPlan(methods, ppo.role_threads.get(role)) for role, methods in sharing.items()}


def episode_tokens(ppo) -> int:
    """The longest sequence a rollout engine holds: a prompt and an answer (or the report's longer one), or a
    multi-turn episode (ppo.environment): every turn's answer and, between turns, an observation of at most
    max_observation_chars characters (a token holds at least one) with its chat-template markup."""
    answer = max(ppo.rollout.max_new_tokens, ppo.report_max_new_tokens)
    env = ppo.environment
    if env.name is None:
        return ppo.rollout.max_prompt_tokens + answer
    between = env.max_observation_chars + OBSERVATION_MARKUP_TOKENS
    return ppo.rollout.max_prompt_tokens + env.max_turns * answer + (env.max_turns - 1) * between


def role_args(cfg: Config, start_model: str) -> dict[str, tuple]:
    """Each role's start arguments: the typed sections it reads (frozen dataclasses pickle through Ray)."""
    ppo, seed, threads = cfg.ppo, cfg.run.seed, thread_plans(cfg)
    # Room for the run report's greedy answers too, which may be longer than the rollouts.
    max_len = episode_tokens(ppo) + 8
    trained = (cfg.model, cfg.lora, cfg.deepspeed, ppo, start_model, seed)
    per_engine = ppo.rollout_batch_size * ppo.samples_per_prompt // ppo.rollout.num_engines  # an even split (config)
    return {"rollout": (start_model, ppo.rollout, seed, max_len, cfg.model.dtype, per_engine, threads["rollout"]),
            "policy": (*trained, threads["policy"]), "value": (*trained, threads["value"]),
            "reference": (cfg.model, ppo.rollout, start_model, threads["reference"], ppo.pack_sequences,
                          ppo.share_prompts)}


def engine_callbacks(roles: PPORoles, output_dir: Path, bucket_mb: int, steps_done: Callable[[], int],
                     roster_changed: Callable[[], None]) -> tuple[Callable, Callable]:
    """(revive, replaced) for the engine group (actors/fault.py). revive brings a fresh engine to where its
    predecessor was: the policy's current weights (what the last sync sent) and the seed counter of the completed
    steps, so a rollout redone after a death samples as an unbroken run would. replaced records the fault."""

    def revive(engine) -> list:
        return [engine.load_weights.remote(*policy_buckets(roles.policy, bucket_mb)),
                engine.set_calls.remote(steps_done())]

    def replaced(rank: int, reason: str) -> None:
        record_fault(output_dir, "engine_replaced", role="rollout", rank=rank, step=steps_done() + 1, reason=reason)
        roster_changed()

    return revive, replaced


class PPORoles:
    """The started roles of one PPO run. Filled role by role, so that `shutdown` frees whatever a start-up that
    failed half way had started."""

    def __init__(self):
        self.placement: dict = {}
        self.rollout: RoleGroup | None = None
        self.policy: RoleGroup | None = None
        self.value: RoleGroup | None = None
        self.reference: RoleGroup | None = None
        self.reward = None  # a reward source: score(prompts, responses) -> scores
        self.functions: RewardFunctions | None = None  # plug-in reward functions, in a worker of their own
        self.environments: Environments | None = None  # multi-turn episodes' environments, in a worker of their own
        self.rollout_engine: str | None = None  # "vllm" or "hf"
        # How the engines hold their weights: plain, packed, packed-reload or reload (RolloutEngine.weight_layout).
        self.rollout_weights: str | None = None
        self.sizes: dict = {}
        self.layouts: dict[str, str] = {}  # trained role -> how it lays out its batches (set once they are up)
        self.startup_s = 0.0
        self.loading_budget: int | None = None  # trained-role processes loading at once (actors/role_start.py)

    def groups(self) -> dict[str, RoleGroup | None]:
        return {"rollout": self.rollout, "policy": self.policy, "value": self.value, "reference": self.reference}

    def start(self, cfg: Config, start_model: str, revive: Callable, replaced: Callable) -> None:
        ppo = cfg.ppo
        cpus, gpus = ppo.cpus_per_actor, ppo.gpus_per_actor
        resources = [RoleResources("rollout", ppo.rollout.num_engines, cpus, gpus),
                     RoleResources("policy", ppo.policy_workers, cpus, gpus)]
        if ppo.uses_value_model:
            resources.append(RoleResources("value", ppo.value_workers, cpus, gpus))
        if separate_reference(cfg):
            resources.append(RoleResources("reference", 1, cpus, gpus))
        scores_preference = "rm" in ppo.reward.enabled_terms  # else no reward source at all (functions alone)
        reward_actor = scores_preference and ppo.reward.rm_source == "model"
        if reward_actor:
            resources.append(RoleResources("reward", 1, cpus, gpus))
        elif scores_preference:  # built first: an unreachable reward service fails the run before anything starts
            self.reward = make_reward_source(ppo, cfg.reward_model, cfg.serve)
        # The whole plan (ppo.placement: strategy, colocation, node resource per role) is checked against the
        # cluster's nodes before any group is reserved: fail now, not after a wait.
        self.placement, bundles = reserve_roles(resources, ppo, grows=cfg.ray.autoscaling)
        args = role_args(cfg, start_model)

        def group(role, cls, ranks, distributed=False, kind=RoleGroup, max_restarts=0):
            return kind(role, cls, ranks, self.placement[role], bundles[role], cpus, gpus, args[role], distributed,
                        name_prefix=cfg.run.name, max_restarts=max_restarts, connect=False)

        # The engines load first; the trained roles load beside them, in turn where the node has fewer cores than
        # loading processes (actors/role_start.py): start-up takes the longest role, not the sum.
        started = time.perf_counter()
        engine_class = rollout_engine_class(ppo.rollout, start_model)
        self.rollout_engine = engine_class.engine
        # A dead engine is replaced and re-synced from the policy; Ray rebuilds the frozen reference itself.
        self.rollout = group("rollout", engine_class, ppo.rollout.num_engines,
                             kind=engine_group(revive, replaced, ppo.rollout.max_replacements))
        engines_up = self.rollout.submit("ping")
        if reward_actor:
            self.reward = make_reward_source(ppo, cfg.reward_model, cfg.serve,
                                             (self.placement["reward"], bundles["reward"][0]))
        if ppo.reward.functions:
            # Light Python scoring beside the heavy roles: it reserves no CPU of the placement plan.
            self.functions = RewardFunctions(ppo.reward.functions, ppo.reward.function_timeout_s,
                                             ppo.reward.function_errors, {"num_cpus": 0})
        if ppo.environment.name is not None:
            env = ppo.environment
            self.environments = Environments(env.name, env.kwargs, env.timeout_s, {"num_cpus": 0})
        launches = self._trainer_launches(cfg, group)
        cores = self._driver_node_cores(bundles)
        self.loading_budget = loading_budget(cores, ppo.rollout.num_engines + int(reward_actor))
        loaded = launch_in_turn(launches, self.loading_budget, engines_up,
                                lambda ended: self.rollout.check(engines_up, ended, "ping"))
        self.sizes = loaded["policy"][0]
        value_sizes = loaded["value"][0] if "value" in loaded else {}
        self.rollout.get(engines_up, "ping")
        self.rollout_weights = self.rollout.call_rank0("weight_layout")
        if self.functions is not None:
            self.functions.ready()
        if self.environments is not None:
            self.environments.ready()
        self.startup_s = time.perf_counter() - started
        # How each trained role lays out its batches (actors/packed.py): padded, packed, or packed with shared prompts.
        self.layouts = {"policy": self.sizes["layout"], **({"value": value_sizes["layout"]} if value_sizes else {})}
        head = "; head at the response tokens" if self.sizes.get("scored_head") else ""  # actors/scored.py
        engines = f"policy {self.sizes['engine']} ({self.layouts['policy']}{head})" + \
            (f", value {value_sizes['engine']} ({self.layouts['value']})" if value_sizes else "")
        log.info("PPO roles up in %.1f s: %d rollout engine(s) (%s, %s weights), policy ×%d (%d/%d trainable), %s, "
                 "reference %s, reward from %s; training engines: %s; trained roles loaded %s",
                 self.startup_s, len(self.rollout), self.rollout_engine, self.rollout_weights,
                 len(self.policy), self.sizes["trainable_params"], self.sizes["total_params"],
                 f"value ×{len(self.value)}" if self.value is not None else
                 f"no value model ({ppo.advantage_estimator}, {ppo.samples_per_prompt} samples per prompt)",
                 "actor" if self.reference else "adapters off", ppo.reward.rm_source, engines,
                 "at once" if all_fit(launches, self.loading_budget) else
                 f"in turn, {self.loading_budget} process(es) at a time beside the loading engines ({cores} cores)")

    def _trainer_launches(self, cfg: Config, group: Callable) -> list[Launch]:
        """The trained roles' starts, policy first: each group is recorded as it is created, so that `shutdown`
        frees it if the start-up fails later."""
        ppo = cfg.ppo

        def spawn(role: str, cls: type, ranks: int, **kwargs) -> Callable[[], RoleGroup]:
            def create() -> RoleGroup:
                setattr(self, role, group(role, cls, ranks, **kwargs))
                return getattr(self, role)
            return create

        def set_up(trained: RoleGroup) -> list:
            trained.connect()
            return trained.submit("setup")

        launches = [Launch("policy", ppo.policy_workers, spawn("policy", PolicyRole, ppo.policy_workers,
                                                               distributed=True), set_up, "setup")]
        if ppo.uses_value_model:
            launches.append(Launch("value", ppo.value_workers, spawn("value", ValueRole, ppo.value_workers,
                                                                     distributed=True), set_up, "setup"))
        if separate_reference(cfg):
            launches.append(Launch("reference", 1, spawn("reference", ReferenceModel, 1,
                                                         max_restarts=ppo.stateless_max_restarts),
                                   lambda reference: reference.submit("ping"), "ping"))
        return launches

    def _driver_node_cores(self, bundles: dict[str, list[int]]) -> int | None:
        """The driver's cores when every role's bundles lie on the driver's node (the embedded cluster, a
        one-node cluster), else None: the cores of other nodes are not known here. A Ray Client driver (ray://)
        is told the head node's id, not its own machine's, so it counts as elsewhere."""
        import ray
        from ray.util.client import ray as client

        if client.is_connected():
            return None
        here = ray.get_runtime_context().get_node_id()
        local = all(bundles_on_node(self.placement[role], indices, here) for role, indices in bundles.items())
        return node_cores() if local else None

    def write_roster(self, output_dir: Path, cfg: Config) -> Path:
        ppo = cfg.ppo
        run = {"run": cfg.run.name, "steps": ppo.steps, "rollout_batch_size": ppo.rollout_batch_size,
               "sequences_per_step": ppo.sequences_per_step, "rollout_engine": self.rollout_engine,
               "rollout_weights": self.rollout_weights,
               "layouts": self.layouts, "policy_scored_head": bool(self.sizes.get("scored_head"))}
        return write_roster(output_dir, run, self.groups(), getattr(self.reward, "actor", None))

    def shutdown(self) -> None:
        """Kill whatever roles were started and free their placement groups."""
        for group in self.groups().values():
            if group is not None:
                group.kill()
        if self.functions is not None:
            self.functions.kill()
        if self.environments is not None:
            self.environments.kill()
        for placement in {id(p): p for p in self.placement.values()}.values():
            release(placement)
