"""The PPO section: rollout sampling, KL control, placement of the roles, and the loop's own knobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from common.config.reward_mix import MonitorConfig, RewardMixConfig
from common.configlib import param, section
from common.errors import ConfigError


@dataclass(frozen=True)
class RolloutConfig:
    engine: Literal["auto", "vllm", "hf"] = param(
        "auto", "rollout engine: vllm, hf (Hugging Face generate: slower, for machines without vLLM), or auto "
                "(vllm when it can be imported, else hf with a warning)")
    num_engines: int = param(1, "rollout engine actors", gt=0)
    temperature: float = param(0.7, "sampling temperature", ge=0.0)
    top_p: float = param(0.9, "nucleus sampling mass", gt=0.0, le=1.0)
    repetition_penalty: float = param(1.2, "vLLM repetition penalty (1.0 = off)", gt=0.0)
    max_new_tokens: int = param(64, "response length cap in tokens", gt=0)
    max_prompt_tokens: int = param(128, "prompts longer than this are truncated from the left", gt=0)
    gpu_memory_utilization: float = param(0.3, "vLLM share of GPU memory (CUDA engines)", gt=0.0, le=1.0)
    kv_cache_gib: int = param(1, "vLLM KV-cache size on CPU engines, GiB (VLLM_CPU_KVCACHE_SPACE); with kv_cache_fit "
                                 "the most it may take", gt=0)
    kv_cache_fit: bool = param(True, "CPU engines: reserve only the KV cache one rollout call can fill (the engine's "
                                     "share of rollout_batch_size × samples_per_prompt, each at the longest episode; "
                                     "at least 64 MiB, at most kv_cache_gib) instead of all of kv_cache_gib "
                                     "(actors/rollout/kv_cache.py)")
    cpu_weights: Literal["auto", "packed", "plain"] = param(
        "auto", "CPU vLLM engines: packed (vLLM's default: each linear layer's weight reordered for oneDNN, so a "
                "decode step multiplies fastest, but every weight sync reorders them again: packed_sync), plain "
                "(the weights kept as loaded and multiplied by torch: a sync copies them in place or views them, with "
                "nothing to reorder, while decode-sized products at hidden size 512 and up are slower), or auto: "
                "plain for fp32 models up to hidden size 256, where it samples as fast, else packed "
                "(actors/rollout/vllm_weights.py)")
    packed_sync: Literal["rebuild", "reload"] = param(
        "rebuild", "CPU vLLM engines with packed weights: a sync hands each packed layer the synced weights and runs "
                   "vLLM's own post-load step, which reorders them for oneDNN again (rebuild: about 1.5x faster at "
                   "27.5M parameters; at the first sync every packed layer must compute bit for bit as after vLLM's "
                   "reload, else the engine keeps the reload), or goes through vLLM's layerwise reload_weights "
                   "(reload) (actors/rollout/packed_rebuild.py)")
    zero_copy_sync: bool = param(
        True, "CPU vLLM engines with plain weights: after a sync through Ray's object store, the engine's parameters "
              "are the synced buckets in the store, not copies of them (no copy in the engine, one copy of the "
              "weights per node however many engines it runs); a model whose loader changes its weights on the way "
              "is found at the first sync and keeps copying (actors/rollout/store_views.py)")
    max_replacements: int = param(3, "dead engines replaced per run (in the same placement bundle, weights re-synced "
                                     "from the policy) before the job fails", ge=0)


@dataclass(frozen=True)
class KLConfig:
    controller: Literal["fixed", "adaptive", "scheduled"] = param(
        "scheduled", "fixed coefficient, adaptive to a target KL, or the piecewise schedule below")
    coef: float = param(0.05, "KL coefficient (fixed controller; start value of the adaptive one)", ge=0.0)
    schedule: list[list[float]] = param([[0.2, 0.08], [0.8, 0.05], [1.0, 0.06]],
                                        "[progress_end, coef] pieces: 0.08 for the first 20%, 0.05 for the middle "
                                        "60%, 0.06 for the last 20%")
    target: float = param(6.0, "adaptive controller: target KL (nats per sequence)", gt=0)
    horizon: int = param(10000, "adaptive controller: horizon in samples", gt=0)
    estimator: Literal["auto", "k1", "k2", "k3"] = param(
        "auto", "per-token KL estimator (Schulman's k1 = log r, k2 = (log r)^2 / 2, k3 = r - 1 - log r, r = "
                "pi / pi_ref); auto: k1 as a reward penalty, k3 as a loss (GRPO's, TRL's and veRL's default there)")
    mode: Literal["reward", "loss"] = param("reward", "KL as a per-token reward penalty or as a loss term")

    @property
    def per_token_estimator(self) -> str:
        """The estimator the run uses: `estimator`, with auto resolved for the mode."""
        if self.estimator != "auto":
            return self.estimator
        return "k3" if self.mode == "loss" else "k1"

    def check(self) -> None:
        if self.mode == "loss" and self.estimator == "k1":
            # k1 = log pi(y) - log pi_ref(y) on the policy's own samples y: its gradient is grad log pi(y), whose
            # expectation under pi is zero, so as a loss it would not hold the policy near the reference at all.
            raise ConfigError("estimator=k1 cannot be a loss (mode=loss): its gradient on the policy's own samples "
                              "is zero in expectation, so it would not hold the policy near the reference; use k3 "
                              "(what estimator=auto picks for a loss) or k2")
        ends = [piece[0] for piece in self.schedule]
        if any(len(piece) != 2 for piece in self.schedule):
            raise ConfigError("schedule pieces must be [progress_end, coef] pairs")
        if ends != sorted(ends) or not ends or ends[-1] != 1.0:
            raise ConfigError(f"schedule progress ends must increase and end at 1.0, got {ends}")


@dataclass(frozen=True)
class DynamicSamplingConfig:
    """DAPO's dynamic sampling (Yu et al. 2025): groups whose answers all scored alike teach a group estimator
    nothing, so they are dropped and more prompts are sampled until the batch is full."""
    enabled: bool = param(False, "with grpo / rloo / reinforce_baseline: drop the groups whose answers all earned "
                                 "the same reward (before the KL penalty) and sample rollout_batch_size more prompts, "
                                 "round after round, until rollout_batch_size groups with a spread are kept")
    max_rounds: int = param(3, "sampling rounds per step at most, the first included; a batch still short after "
                               "them is filled with the dropped groups (logged as dynamic/filled_groups) so the step "
                               "keeps its shape", gt=0)


SHIPPED_ENVIRONMENTS = ("follow_up", "calculator")  # actors/environments.py registers them (a test keeps it so)


@dataclass(frozen=True)
class EnvironmentConfig:
    """Multi-turn rollouts (actors/environments.py, actors/episodes.py): the model and an environment take turns."""
    name: Optional[str] = param(None, "environment: a shipped one (follow_up, calculator) or 'package.module:Class' / "
                                      "'path/to/file.py:Class' with reset(record) -> messages and step(text) -> "
                                      "(messages, reward, done); unset: one single-turn answer per prompt")
    kwargs: dict[str, Any] = param({}, "the environment's constructor arguments")
    max_turns: int = param(2, "model turns per episode at most", gt=0)
    timeout_s: float = param(10.0, "an environment call (reset or step) past this many seconds ends its episode with "
                                   "reward 0 (counted in env/errors)", gt=0)
    max_observation_chars: int = param(160, "each observation turn is cut to this many characters (the rollout "
                                                 "engine holds the whole episode: prompt, every answer and every "
                                                 "observation)", gt=0)
    reward_weight: float = param(1.0, "weight of the episode's summed environment reward in the mixed reward "
                                      "(logged as reward/env)", ge=0.0)


PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


@dataclass(frozen=True)
class RolePlacementConfig:
    """Where one PPO role's ranks go (cluster/placement.py)."""
    strategy: Optional[PlacementStrategy] = param(
        None, "how this role's ranks spread over nodes: PACK (few nodes), SPREAD (many), STRICT_PACK (one node), "
              "STRICT_SPREAD (one rank per node); unset: ppo.placement_strategy")
    colocate_group: Optional[str] = param(
        None, "roles naming the same group share one placement group (e.g. policy and reference on the same "
              "nodes or, with fractional gpus_per_actor, the same GPUs); unset: the role's own group, or one "
              "group for every role when ppo.colocate is on")
    node_resource: Optional[str] = param(
        None, "custom node resource every rank needs, e.g. rollout_node for nodes started with "
              "`ray start --resources='{\"rollout_node\": 2}'`: pins the role to the nodes that declare it")
    node_resource_per_rank: float = param(1.0, "amount of node_resource each rank takes (a node declaring 2 "
                                               "hosts 2 ranks at the default 1)", gt=0)


@dataclass(frozen=True)
class PlacementConfig:
    """Per-role placement of the PPO actors across the nodes of the cluster."""
    rollout: RolePlacementConfig = section(RolePlacementConfig, "vLLM engines")
    policy: RolePlacementConfig = section(RolePlacementConfig, "policy DeepSpeed ranks")
    value: RolePlacementConfig = section(RolePlacementConfig, "value DeepSpeed ranks")
    reference: RolePlacementConfig = section(RolePlacementConfig, "frozen reference actor")
    reward: RolePlacementConfig = section(RolePlacementConfig, "reward-model actor (rm_source=model)")
    timeout_s: float = param(60.0, "give up reserving a feasible plan after this many seconds (an infeasible one "
                                   "fails at once, naming what is missing)", gt=0)

    def roles(self) -> dict[str, RolePlacementConfig]:
        return {"rollout": self.rollout, "policy": self.policy, "value": self.value, "reference": self.reference,
                "reward": self.reward}

    def check(self) -> None:
        by_group: dict[str, dict[str, str]] = {}
        for role, cfg in self.roles().items():
            if cfg.colocate_group and cfg.strategy:
                by_group.setdefault(cfg.colocate_group, {})[role] = cfg.strategy
        for group, strategies in by_group.items():
            if len(set(strategies.values())) > 1:
                detail = ", ".join(f"{role}.strategy={strategy}" for role, strategy in strategies.items())
                raise ConfigError(f"colocate_group {group!r} mixes {detail}: roles in one group share one placement "
                                  f"group, so give them one strategy (or set it on one role only)")


THREADED_ROLES = ("policy", "value", "reference", "rollout")


@dataclass(frozen=True)
class PPOConfig:
    prompt_files: list[str] = param(["../shared/data/sft/llms-from-scratch/instruction-data.json"],
                                    "files whose user turns become PPO prompts")
    steps: int = param(20, "PPO steps (rollout → update → sync)", gt=0)
    rollout_batch_size: int = param(32, "prompts per step", gt=0)
    mini_batch_size: int = param(16, "sequences per optimizer step", gt=0)
    ppo_epochs: int = param(4, "passes over each rollout batch", gt=0)
    lr: float = param(1e-6, "policy learning rate (10-20x below SFT)", gt=0)
    value_lr: float = param(5e-6, "value model learning rate", gt=0)
    clip_range: float = param(0.2, "policy ratio clip", gt=0)
    value_clip_range: float = param(0.2, "value prediction clip", gt=0)
    dual_clip: Optional[float] = param(None, "dual-clip bound c > 1 for negative advantages (unset: off)", gt=1.0)
    trainer_logprobs: Literal["processed", "temperature"] = param(
        "processed", "the distribution the policy's log-probs (old and new, for the PPO ratio) are taken under: "
                     "processed: the sampler's own (repetition penalty, temperature, top_p, as vLLM's processed "
                     "log-probs), so the ratio starts at exactly 1; temperature: logits / temperature only, which "
                     "ignores what top_p and the penalty do to the sampled tokens. The KL to the reference is always "
                     "taken between the temperature-only distributions")
    rollout_correction: Literal["none", "tis", "mask"] = param(
        "none", "importance-sampling correction for the gap between pi_old (the trainer's) and the distribution "
                "that sampled (the engine's log-probs): tis weights each token's loss by min(pi_old/pi_behaviour, "
                "rollout_correction_cap); mask drops tokens whose ratio lies outside [1/cap, cap]; none: no weight")
    rollout_correction_cap: float = param(2.0, "C of rollout_correction (> 1)", gt=1.0)
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                              "seq-mean-token-sum-norm"] = param(
        "token-mean", "how the policy loss averages: over all response tokens of the mini-batch (token-mean), per "
                      "response then over responses (seq-mean-token-mean, the original GRPO), response sums over "
                      "responses (seq-mean-token-sum), or response sums over responses x rollout.max_new_tokens "
                      "(seq-mean-token-sum-norm, Dr. GRPO's constant normaliser)")
    async_rollouts: int = param(0, "1: the rollout engines sample the next step's batch while the policy scores, "
                                   "trains and syncs on this one (one-step off-policy, as OpenRLHF's async mode, veRL's "
                                   "one-step-off-policy trainer and TRL's AsyncGRPO); each batch is then one update "
                                   "behind the policy that trains on it (logged as rollout/staleness) and, with "
                                   "rollout_correction=none, PPO's ratio is taken against the engine's own log-probs "
                                   "of the sampled tokens (tis / mask instead keep the ratio against the current policy "
                                   "and correct towards the engine's: decoupled PPO); 0: lock-step", ge=0, le=1)
    max_grad_norm: float = param(0.5, "gradient clipping max norm", gt=0)
    advantage_estimator: Literal["gae", "grpo", "rloo", "reinforce_baseline"] = param(
        "gae", "gae: a value model (critic) and GAE, as in classic PPO; grpo / rloo / reinforce_baseline: no value "
               "model, each response judged against the other samples_per_prompt - 1 answers to its prompt "
               "(grpo: (R - group mean) / group std; rloo: R - mean of the others; reinforce_baseline: R - group "
               "mean, then whitened)")
    samples_per_prompt: int = param(1, "responses sampled per prompt each step (the group of grpo / rloo / "
                                       "reinforce_baseline: at least 2); a step trains on rollout_batch_size x "
                                       "this many sequences", gt=0)
    gamma: float = param(1.0, "discount (gae; group estimators score the whole response)", ge=0.0, le=1.0)
    lam: float = param(0.95, "GAE lambda", ge=0.0, le=1.0)
    whiten_advantages: bool = param(True, "normalise advantages to zero mean, unit variance per batch (gae and "
                                          "reinforce_baseline; grpo and rloo are normalised within each group "
                                          "already)")
    init_model: Optional[str] = param(None, "starting policy folder (unset: model.path; the pipeline passes the "
                                            "SFT model)")
    reference: Literal["copy", "adapter_disabled"] = param(
        "copy", "frozen reference: a copy of the starting policy in its own actor, or (LoRA policies) the "
                "policy itself with its adapters disabled")
    value_init: Optional[str] = param(None, "value-model backbone folder (unset: the starting policy)")
    prompt_template: str = param("{prompt}", "template applied to each prompt's last user turn; {prompt} is "
                                              "replaced by the text")
    max_prompts: Optional[int] = param(None, "read at most this many prompts (unset: all)", gt=0)
    policy_workers: int = param(1, "DeepSpeed ranks of the policy group", gt=0)
    value_workers: int = param(1, "DeepSpeed ranks of the value group", gt=0)
    cpus_per_actor: float = param(1.0, "CPUs reserved by every role actor", gt=0)
    role_threads: dict[str, int] = param({}, "torch threads per role (policy, value, reference, rollout), e.g. "
                                             "{policy: 2, reference: 1}; a role not named gets the node's cores "
                                             "divided by the ranks that compute at the same time as it in its "
                                             "busiest phase (policy and reference in phase 3, policy and value in "
                                             "phase 6, the engines in phase 1, or beside every phase under "
                                             "async_rollouts), so overlapping phases never oversubscribe the cores")
    gpus_per_actor: float = param(0.0, "GPUs per role actor (fractions colocate roles on one GPU)", ge=0)
    colocate: bool = param(False, "place policy, value, reference and reward actors in one placement group")
    placement_strategy: PlacementStrategy = param(
        "PACK", "how a role's ranks are placed across nodes (default for every role; see ppo.placement)")
    pack_sequences: bool = param(True, "score and train on the sequences packed end to end into rows instead of "
                                       "right-padded to the longest one (veRL's remove-padding, OpenRLHF's packing "
                                       "samples): the same outputs without the padding's share of the work; each "
                                       "role checks at start that its model gives the same outputs packed as "
                                       "padded, and pads (saying so) where it does not")
    share_prompts: bool = param(True, "with pack_sequences: the sequences of a batch that start with the same "
                                      "prompt (GRPO's groups, PPO's samples_per_prompt) carry one copy of it, which "
                                      "each answer attends to under a 4-D attention mask, and mini-batches take "
                                      "the groups in random order, each group's answers side by side (a group cut "
                                      "by a mini-batch boundary carries its prompt in both): the same outputs and "
                                      "gradients for half the tokens at 4 answers of 24 tokens to prompts of ~50; "
                                      "checked at start like pack_sequences (packs without sharing, saying so, "
                                      "where the model gives other outputs)")
    sync_bucket_mb: int = param(64, "weight-sync bucket size: parameters are gathered and sent this many MB "
                                    "at a time", gt=0)
    weight_sync: Literal["auto", "object_store", "collective"] = param(
        "auto", "how phase 7 moves the policy's weights into the rollout engines: object_store (policy rank 0 puts "
                "packed buckets in Ray's object store, each engine reads them; on one node, shared memory read "
                "in place), collective (rank 0 broadcasts them to every engine over a process group of their own: "
                "NCCL between GPUs, gloo between CPUs), or auto: collective where every role has whole GPUs "
                "(gpus_per_actor >= 1) or, on CPUs, where an engine runs on another node than policy rank 0, "
                "else the object store. A collective sync that fails (a dead engine) is redone through the "
                "object store, the named fallback, and the group is formed again")
    weight_sync_timeout_s: float = param(1800.0, "seconds a collective weight sync may wait for its peers before "
                                                 "failing (and falling back to the object store); with "
                                                 "async_rollouts an engine joins a sync only once the rollout it "
                                                 "is sampling is done, so this bounds a rollout too", gt=0)
    max_nan_steps: int = param(3, "stop after this many consecutive steps skipped for a NaN/Inf loss", gt=0)
    max_restarts: int = param(2, "times one job restarts every role from the last checkpoint after a policy or "
                                 "value rank dies (their optimizer state lives in one process group)", ge=0)
    stateless_max_restarts: int = param(3, "Ray restarts of the frozen reference and reward-model actors: rebuilt "
                                           "from their start arguments, the interrupted call retried", ge=0)
    save_every: int = param(10, "checkpoint every N steps", gt=0)
    export: bool = param(True, "write the final policy as a Hugging Face model")
    report_prompts: list[str] = param(["Tell me a story about a dog.", "What is the capital of France?",
                                       "Give three tips for staying healthy."],
                                      "fixed prompts the run report (report.md) answers greedily with the rollout "
                                      "engine before the first update and after the last; empty: no samples")
    report_max_new_tokens: int = param(48, "length cap of the report's greedy answers, in tokens", gt=0)
    eval_every: Optional[int] = param(None, "every N steps (and at the last), answer the held-out prompts greedily "
                                            "and log their preference score as eval/rm_mean (unset: no evaluation)",
                                      gt=0)
    eval_samples: int = param(1, "answers sampled per held-out prompt at the rollout temperature besides the greedy "
                                 "one; above 1, every reward function with success_at logs eval/<name>_pass@1, "
                                 "eval/<name>_pass@<k> (the unbiased estimator of Chen et al. 2021) and "
                                 "eval/<name>_mean@<k>", gt=0)
    eval_prompts: int = param(32, "prompts held out of training for eval_every (a seeded choice from the pool)",
                              gt=0)
    inject_nan_at_step: Optional[int] = param(None, "fault injection for tests and demos: this step's advantages "
                                                    "become NaN, so the instability guard and its rollback can be "
                                                    "seen working (unset: off)", gt=0)
    kl: KLConfig = section(KLConfig, "KL control")
    rollout: RolloutConfig = section(RolloutConfig, "vLLM sampling")
    reward: RewardMixConfig = section(RewardMixConfig, "mixed reward")
    monitor: MonitorConfig = section(MonitorConfig, "training-health monitors")
    placement: PlacementConfig = section(PlacementConfig, "where each role's actors go across nodes")
    environment: EnvironmentConfig = section(EnvironmentConfig, "multi-turn episodes with an environment")
    dynamic_sampling: DynamicSamplingConfig = section(DynamicSamplingConfig, "drop groups with no reward spread "
                                                                             "and sample more (DAPO)")

    def _check_environment(self) -> None:
        env = self.environment
        if ":" not in env.name and env.name not in SHIPPED_ENVIRONMENTS:
            raise ConfigError(f"environment.name {env.name!r} is neither a shipped environment "
                              f"({', '.join(SHIPPED_ENVIRONMENTS)}) nor 'package.module:Class' / 'file.py:Class'")
        together = [key for key, on in (("async_rollouts", self.async_rollouts),
                                         ("eval_samples > 1", self.eval_samples > 1)) if on]
        if env.max_turns >= 10 or self.dynamic_sampling.max_rounds >= 10:
            raise ConfigError("environment: max_turns and dynamic_sampling.max_rounds must stay below 10 (each turn of "
                              "each round samples from a seed stream of its own)")
        if together:
            raise ConfigError(f"environment runs multi-turn episodes, which {together[0]} does not support yet")
        if any(function.term == "env" for function in self.reward.functions):
            raise ConfigError("reward.functions: the term name 'env' is the environment's reward; rename the function")

    @property
    def uses_value_model(self) -> bool:
        return self.advantage_estimator == "gae"

    @property
    def whitens_advantages(self) -> bool:
        """grpo and rloo advantages are normalised within each group already."""
        return self.whiten_advantages and self.advantage_estimator in ("gae", "reinforce_baseline")

    @property
    def sequences_per_step(self) -> int:
        return self.rollout_batch_size * self.samples_per_prompt

    def check(self) -> None:
        if not self.uses_value_model and self.samples_per_prompt < 2:
            raise ConfigError(f"advantage_estimator={self.advantage_estimator} compares the answers to one prompt "
                              f"with each other: set samples_per_prompt to 2 or more (got {self.samples_per_prompt})")
        batch = (f"rollout_batch_size x samples_per_prompt ({self.rollout_batch_size} x {self.samples_per_prompt})"
                 if self.samples_per_prompt > 1 else f"rollout_batch_size ({self.rollout_batch_size})")
        if self.sequences_per_step % self.mini_batch_size:
            raise ConfigError(f"{batch} must be a multiple of mini_batch_size ({self.mini_batch_size})")
        trained = [("policy_workers", self.policy_workers)]
        if self.uses_value_model:
            trained.append(("value_workers", self.value_workers))
        for role, ranks in trained:
            if self.mini_batch_size % ranks:
                raise ConfigError(f"mini_batch_size ({self.mini_batch_size}) must split evenly over {role} "
                                  f"({ranks})")
        if self.sequences_per_step % self.rollout.num_engines:
            raise ConfigError(f"{batch} must split evenly over rollout.num_engines ({self.rollout.num_engines})")
        terms = [function.term for function in self.reward.functions]
        if self.monitor.gold_reward is not None and self.monitor.gold_reward not in terms:
            raise ConfigError(f"monitor.gold_reward={self.monitor.gold_reward!r} names no term of reward.functions "
                              f"({terms or 'none given'}): add the gold reward as a function (weight 0 logs it "
                              f"without training on it)")
        if self.reward.term_normalization == "group" and self.samples_per_prompt < 2:
            raise ConfigError(f"reward.term_normalization=group normalises over the answers to each prompt: set "
                              f"samples_per_prompt to 2 or more (got {self.samples_per_prompt})")
        if self.dynamic_sampling.enabled and self.uses_value_model:
            raise ConfigError("dynamic_sampling drops groups of answers that all scored alike: it needs a group "
                              "estimator (advantage_estimator=grpo, rloo or reinforce_baseline), not gae")
        if self.async_rollouts and self.rollout_correction == "none" and self.trainer_logprobs != "processed":
            # A batch sampled one update behind takes the engine's log-probs as PPO's pi_old (actors/ppo_loop.py,
            # _ratio_old): those are the processed distribution, so the new side of the ratio must be too.
            raise ConfigError("async_rollouts without a rollout_correction takes the engine's log-probs as PPO's "
                              "old policy, which are the processed distribution (temperature, top-p, repetition "
                              f"penalty); trainer_logprobs={self.trainer_logprobs} would put another in the ratio's "
                              "numerator: set trainer_logprobs=processed, or rollout_correction=tis or mask")
        if self.environment.name is not None:
            self._check_environment()
        if self.eval_samples > 1 and not self.eval_every:
            raise ConfigError(f"eval_samples={self.eval_samples} samples answers to the held-out prompts: set "
                              f"eval_every too")
        if "{prompt}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain {prompt}")
        if self.weight_sync == "collective" and 0 < self.gpus_per_actor < 1:
            raise ConfigError(f"weight_sync=collective broadcasts over NCCL, which needs a GPU of its own per member; "
                              f"gpus_per_actor={self.gpus_per_actor} shares GPUs: set weight_sync=object_store or "
                              "auto")
        unknown = sorted(set(self.role_threads) - set(THREADED_ROLES))
        if unknown or any(n < 1 for n in self.role_threads.values()):
            raise ConfigError(f"role_threads takes positive thread counts for {list(THREADED_ROLES)}, got "
                              f"{dict(self.role_threads)}")
