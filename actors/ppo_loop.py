"""The PPO driver: owns the role actors and runs one step as eight numbered, timed phases.

    1 rollout    vLLM engine actors sample ppo.samples_per_prompt responses per prompt
    2 score      reward source (reward-model actor, HTTP service or programmatic) → preference scores
    3 reference  policy (old) and reference log-probs of the sampled tokens, in parallel
    4 values     value actor (skipped by the critic-free estimators: grpo, rloo, reinforce_baseline)
    5 advantages mixed reward, per-token KL penalty, then GAE or a group baseline, whitening — pure functions
    6 train      policy and value ranks update in parallel (DeepSpeed ZeRO, ppo_epochs × mini-batches)
    7 sync       new policy weights → every vLLM engine through the object store (no disk round trip)
    8 monitor    metrics, training-health alarms and their actions, checkpoint

The driver holds token ids and per-token tensors only; model weights live in the actors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from actors.algo import (ADVANTAGE_ESTIMATORS, group_advantages, kl_penalized_rewards, kl_per_token,
                         make_kl_controller, masked_sum, masked_whiten, per_token, zero_spread_share)
from actors.algo.monitors import HealthMonitor, most_severe_action, response_metrics
from actors.algo.rewards import RewardBatch, mix_rewards, reward_log
from actors.protocol import PolicyBatch, TokenBatch, ValueBatch, shard
from jobs.config import Config, resolve_path
from jobs.configlib import to_dict

log = logging.getLogger("rayalign.ppo")
PHASES = ("rollout", "score", "reference", "values", "advantages", "train", "sync", "monitor")


class TooManyNaNSteps(RuntimeError):
    """Training produced NaN/Inf losses for max_nan_steps steps in a row."""


# ---- typed results of the phases ------------------------------------------------------------------------
@dataclass
class Rollout:
    prompts: list[list[dict]]
    prompt_keys: list[str]
    responses: list[str]
    tokens: TokenBatch
    generated_tokens: int
    finished: float  # share of responses that ended with EOS


@dataclass
class LogProbs:
    old: torch.Tensor  # [B, L-1]
    ref: torch.Tensor  # [B, L-1]


@dataclass
class Advantages:
    advantages: torch.Tensor
    returns: torch.Tensor
    token_rewards: torch.Tensor
    seq_kl: torch.Tensor  # [B] with the configured estimator
    seq_kl_k3: float  # batch mean with k3 (non-negative; logged for comparison whatever the estimator)
    kl_coef: float
    kl_loss_coef: float
    reward_metrics: dict


@dataclass
class StepResult:
    metrics: dict
    alarms: list = field(default_factory=list)
    stop: bool = False


# ---- prompts --------------------------------------------------------------------------------------------
def load_prompts(cfg: Config) -> list[list[dict]]:
    """User turns from the prompt files, each rendered through ppo.prompt_template."""
    from jobs.records import prompt_of, read_many

    prompts = []
    for record in read_many(cfg.ppo.prompt_files, cfg.ppo.max_prompts):
        turns = [dict(m) for m in prompt_of(record)]
        if not turns or turns[-1]["role"] != "user":
            continue
        turns[-1]["content"] = cfg.ppo.prompt_template.replace("{prompt}", turns[-1]["content"])
        prompts.append(turns)
    if not prompts:
        from actors.sft_data import EmptyDatasetError

        raise EmptyDatasetError(f"no PPO prompts ending in a user turn in {cfg.ppo.prompt_files}")
    return prompts


def hold_out(pool_size: int, held: int, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) prompt indices: a seeded choice of `held` prompts that training never sees, the
    same on every resume of the run."""
    if held >= pool_size:
        from actors.sft_data import EmptyDatasetError

        raise EmptyDatasetError(f"ppo.eval_prompts={held} would hold out all {pool_size} PPO prompts; lower it "
                                f"or add prompts")
    order = list(range(pool_size))
    random.Random(seed * 4099 + 17).shuffle(order)
    return sorted(order[held:]), sorted(order[:held])


def prompts_for_step(pool_size: int, batch: int, step: int, seed: int) -> list[int]:
    """Indices of the step's prompts: a seeded reshuffle of the pool per pass, so a resumed run sees the
    same prompts at the same step."""
    per_pass = max(pool_size // batch, 1)
    order = list(range(pool_size))
    random.Random(seed * 7919 + step // per_pass).shuffle(order)
    start = (step % per_pass) * batch
    picked = order[start:start + batch]
    return picked + order[:batch - len(picked)]


# ---- the driver -----------------------------------------------------------------------------------------
class PPOLoop:
    def __init__(self, cfg: Config, output_dir: Path):
        self.cfg, self.output_dir = cfg, Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.step_index = 0
        self.kl_scale = 1.0  # raised by the monitor's raise_kl action
        self.nan_streak = 0
        self.policy_lr = cfg.ppo.lr
        self.preempted = threading.Event()  # set on SIGTERM (actors/fault.py): finish the step, checkpoint, stop

    # ---- start-up --------------------------------------------------------------------------------------
    def start(self) -> None:
        from actors import modeling
        from actors.algo.lexicon import Lexicon
        from jobs.metrics import MetricsLogger

        cfg = self.cfg
        start_model = str(resolve_path(cfg.ppo.init_model or cfg.model.path))
        self.tokenizer = modeling.load_tokenizer(start_model, cfg.model.chat_template)
        self.prompts, self.eval_prompts = load_prompts(cfg), []
        if cfg.ppo.eval_every:
            train, held = hold_out(len(self.prompts), cfg.ppo.eval_prompts, cfg.run.seed)
            self.prompts, self.eval_prompts = [self.prompts[i] for i in train], [self.prompts[i] for i in held]
        self.prompt_ids = [self._encode_prompt(p) for p in self.prompts]
        self.eval_prompt_ids = [self._encode_prompt(p) for p in self.eval_prompts]
        self.lexicon = Lexicon.load(resolve_path(cfg.ppo.reward.safety_lexicon_dir)) \
            if "safety" in cfg.ppo.reward.enabled_terms else None
        self.controller = make_kl_controller(cfg.ppo.kl.controller, coef=cfg.ppo.kl.coef,
                                             schedule=cfg.ppo.kl.schedule, target=cfg.ppo.kl.target,
                                             horizon=cfg.ppo.kl.horizon)
        self.monitor = HealthMonitor(cfg.ppo.monitor)
        self._spawn_roles(start_model)
        self.metrics = MetricsLogger(self.output_dir)
        self.resume()
        if self.step_index == 0:
            self.record_answers("before")

    def _encode_prompt(self, messages: list[dict]) -> list[int]:
        from actors.chat import encode_prompt

        return encode_prompt(self.tokenizer, messages, self.cfg.ppo.rollout.max_prompt_tokens)

    def _spawn_roles(self, start_model: str) -> None:
        from actors.fault import engine_group
        from actors.group import RoleGroup
        from actors.policy import PolicyRole
        from actors.reference import ReferenceModel
        from actors.reward_sources import make_reward_source
        from actors.rollout import rollout_engine_class
        from actors.value import ValueRole
        from cluster.placement import RoleResources, reserve_roles

        cfg, ppo = self.cfg, self.cfg.ppo
        cpus, gpus = ppo.cpus_per_actor, ppo.gpus_per_actor
        separate_reference = ppo.reference == "copy" or not cfg.lora.enabled
        roles = [RoleResources("rollout", ppo.rollout.num_engines, cpus, gpus),
                 RoleResources("policy", ppo.policy_workers, cpus, gpus)]
        if ppo.uses_value_model:
            roles.append(RoleResources("value", ppo.value_workers, cpus, gpus))
        if separate_reference:
            roles.append(RoleResources("reference", 1, cpus, gpus))
        reward_actor = ppo.reward.rm_source == "model"
        if reward_actor:
            roles.append(RoleResources("reward", 1, cpus, gpus))
        else:  # built first: an unreachable reward service fails the run before anything is reserved or started
            self.reward = make_reward_source(cfg)
        # The whole plan (ppo.placement: strategy, colocation, node resource per role) is checked against the
        # cluster's nodes before any group is reserved: fail now, not after a wait.
        self.placement, bundles = reserve_roles(roles, ppo)
        config = to_dict(cfg)
        # Room for the run report's greedy answers too, which may be longer than the rollouts.
        max_len = ppo.rollout.max_prompt_tokens + max(ppo.rollout.max_new_tokens, ppo.report_max_new_tokens) + 8

        def group(role, cls, ranks, args, distributed=False, kind=RoleGroup, max_restarts=0):
            return kind(role, cls, ranks, self.placement[role], bundles[role], cpus, gpus, args, distributed,
                        name_prefix=cfg.run.name, max_restarts=max_restarts)

        engine_class = rollout_engine_class(ppo.rollout)
        self.rollout_engine = engine_class.engine
        # A dead engine is replaced and re-synced from the policy; Ray rebuilds the frozen reference itself.
        self.rollout = group("rollout", engine_class, ppo.rollout.num_engines,
                             (start_model, ppo.rollout, cfg.run.seed, max_len, cfg.model.dtype),
                             kind=engine_group(self))
        self.policy = group("policy", PolicyRole, ppo.policy_workers, (config,), distributed=True)
        self.value = group("value", ValueRole, ppo.value_workers, (config,), distributed=True) \
            if ppo.uses_value_model else None
        self.reference = group("reference", ReferenceModel, 1, (config,),
                               max_restarts=ppo.stateless_max_restarts) if separate_reference else None
        sizes = self.policy.call("setup")[0]
        if self.value is not None:
            self.value.call("setup")
        self.rollout.call("ping")
        if reward_actor:
            self.reward = make_reward_source(cfg, (self.placement["reward"], bundles["reward"][0]))
        log.info("PPO roles up: %d rollout engine(s) (%s), policy ×%d (%d/%d trainable), %s, reference %s, "
                 "reward from %s", len(self.rollout), self.rollout_engine, len(self.policy), sizes["trainable_params"],
                 sizes["total_params"], f"value ×{len(self.value)}" if self.value is not None else
                 f"no value model ({ppo.advantage_estimator}, {ppo.samples_per_prompt} samples per prompt)",
                 "actor" if self.reference else "adapters off", ppo.reward.rm_source)

    # ---- the step --------------------------------------------------------------------------------------
    def step(self, step: int) -> StepResult:
        """One PPO step: the eight phases in order, each timed."""
        timings: dict[str, float] = {}
        progress = step / max(self.cfg.ppo.steps, 1)
        with timed(timings, "rollout"):
            rollout = self.rollout_phase(step)
        with timed(timings, "score"):
            rm_scores = self.score_phase(rollout)
        with timed(timings, "reference"):
            logps = self.logprob_phase(rollout.tokens)
        with timed(timings, "values"):
            values = self.value_phase(rollout.tokens)
        with timed(timings, "advantages"):
            adv = self.advantage_phase(rollout, rm_scores, logps, values, progress)
        with timed(timings, "train"):
            train_stats = self.train_phase(rollout.tokens, logps, values, adv, step)
        with timed(timings, "sync"):
            self.sync_phase()
        with timed(timings, "monitor"):
            result = self.monitor_phase(step, rollout, rm_scores, adv, train_stats, timings)
        result.metrics["time/monitor"] = timings["monitor"]
        if self.eval_prompts and (step % self.cfg.ppo.eval_every == 0 or step == self.cfg.ppo.steps):
            with timed(timings, "eval"):
                result.metrics.update(self.eval_phase())
            result.metrics["time/eval"] = timings["eval"]
        result.metrics["time/step"] = sum(timings.values())
        return result

    # held-out evaluation (every ppo.eval_every steps)
    def eval_phase(self) -> dict:
        """Greedy answers of the just-synced weights to prompts training never sees, scored by the reward source:
        a rising training reward with a flat held-out one is memorisation, not learning. Greedy, so the sampling
        seed stream (and with it a resumed run's rollouts) is left alone."""
        ids = self.rollout.call_rank0("greedy", self.eval_prompt_ids, self.cfg.ppo.rollout.max_new_tokens)
        responses = [self.tokenizer.decode(r, skip_special_tokens=True) for r in ids]
        metrics = {"eval/response_chars_mean": sum(len(r) for r in responses) / len(responses)}
        if "rm" in self.cfg.ppo.reward.enabled_terms:
            scores = self.reward.score(self.eval_prompts, responses)
            metrics["eval/rm_mean"] = sum(scores) / len(scores)
        return metrics

    # 1
    def rollout_phase(self, step: int) -> Rollout:
        ppo = self.cfg.ppo
        picked = prompts_for_step(len(self.prompts), ppo.rollout_batch_size, step, self.cfg.run.seed)
        picked = [i for i in picked for _ in range(ppo.samples_per_prompt)]  # each prompt's group is contiguous
        prompt_ids = [self.prompt_ids[i] for i in picked]
        per_engine = len(prompt_ids) // len(self.rollout)
        # first_index: every response of the step gets its own seed, whichever engine samples it (a group split
        # over two engines would otherwise draw the same answers twice).
        chunks = [(prompt_ids[i * per_engine:(i + 1) * per_engine], None, None, i * per_engine)
                  for i in range(len(self.rollout))]
        samples = [s for part in self.rollout.call("generate", per_rank=chunks) for s in part]
        responses = [self.tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in samples]
        tokens = TokenBatch.from_samples([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                                         self.tokenizer.pad_token_id)
        return Rollout(prompts=[self.prompts[i] for i in picked], prompt_keys=[str(i) for i in picked],
                       responses=responses, tokens=tokens,
                       generated_tokens=sum(len(s.response_ids) for s in samples),
                       finished=sum(s.finish_reason == "stop" for s in samples) / len(samples))

    # 2
    def score_phase(self, rollout: Rollout) -> torch.Tensor:
        if "rm" not in self.cfg.ppo.reward.enabled_terms:
            return torch.zeros(len(rollout.responses))
        return torch.tensor(self.reward.score(rollout.prompts, rollout.responses), dtype=torch.float32)

    # 3
    def logprob_phase(self, tokens: TokenBatch) -> LogProbs:
        shards = [(part,) for part in shard(tokens, len(self.policy))]
        old_refs = self.policy.submit("logprobs", per_rank=shards)
        if self.reference is not None:
            ref = self.reference.call("logprobs", tokens)[0]
        else:
            ref = torch.cat(self.policy.call("logprobs", per_rank=[(s[0], True) for s in shards]))
        old = torch.cat(self.policy.get(old_refs, "logprobs"))
        return LogProbs(old=old, ref=ref)

    # 4
    def value_phase(self, tokens: TokenBatch) -> torch.Tensor:
        if self.value is None:  # critic-free estimators: nothing to ask
            return torch.zeros(tokens.action_mask.shape, dtype=torch.float32)
        return torch.cat(self.value.call("values", per_rank=[(part,) for part in shard(tokens, len(self.value))]))

    # 5
    def advantage_phase(self, rollout: Rollout, rm_scores: torch.Tensor, logps: LogProbs, values: torch.Tensor,
                        progress: float) -> Advantages:
        ppo = self.cfg.ppo
        mask = rollout.tokens.action_mask
        seq_kl = masked_sum(kl_per_token(logps.old, logps.ref, ppo.kl.estimator), mask, dim=-1)
        kl_coef = self.controller.value(progress) * self.kl_scale
        mixed = mix_rewards(RewardBatch(rollout.responses, rm_scores, seq_kl, kl_coef=kl_coef,
                                        safety_judge=self.lexicon), ppo.reward)
        in_reward = ppo.kl.mode == "reward"
        token_rewards, _ = kl_penalized_rewards(mixed.terminal_reward, logps.old, logps.ref, mask,
                                                coef=mixed.kl_coef_per_token if in_reward else 0.0,
                                                estimator=ppo.kl.estimator)
        group_metrics = {}
        if ppo.uses_value_model:
            advantages, returns = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards, values, mask, ppo.gamma, ppo.lam)
        else:  # one score per response (its whole return), judged against the other answers to its prompt
            sequence_returns = masked_sum(token_rewards, mask, dim=-1)
            advantages = per_token(group_advantages(sequence_returns, ppo.samples_per_prompt,
                                                    ppo.advantage_estimator), mask)
            returns = per_token(sequence_returns, mask)
            group_metrics["advantage/zero_spread_groups"] = zero_spread_share(sequence_returns,
                                                                               ppo.samples_per_prompt)
        if ppo.whitens_advantages:
            advantages = masked_whiten(advantages, mask)
        self.controller.update(float(seq_kl.mean()), len(rollout.responses))
        seq_kl_k3 = float(masked_sum(kl_per_token(logps.old, logps.ref, "k3"), mask, dim=-1).mean())
        return Advantages(advantages, returns, token_rewards, seq_kl, seq_kl_k3, kl_coef,
                          0.0 if in_reward else mixed.kl_coef_per_token, {**reward_log(mixed), **group_metrics})

    # 6
    def train_phase(self, tokens: TokenBatch, logps: LogProbs, values: torch.Tensor, adv: Advantages,
                    step: int) -> dict:
        seed = self.cfg.run.seed * 100_003 + step
        advantages = adv.advantages
        if step == self.cfg.ppo.inject_nan_at_step:  # fault injection: lets the NaN guard and rollback be shown
            advantages = torch.full_like(advantages, float("nan"))
        policy_batch = PolicyBatch(tokens.input_ids, tokens.attention_mask, tokens.action_mask, logps.old, logps.ref,
                                   advantages)
        policy_refs = self.policy.submit("train", per_rank=[(part, seed, adv.kl_loss_coef)
                                                             for part in shard(policy_batch, len(self.policy))])
        value_refs = None
        if self.value is not None:
            value_batch = ValueBatch(tokens.input_ids, tokens.attention_mask, tokens.action_mask, values, adv.returns)
            value_refs = self.value.submit("train", per_rank=[(part, seed)
                                                               for part in shard(value_batch, len(self.value))])
        stats = self.policy.get(policy_refs, "train")[0]
        if value_refs is not None:
            stats.update(self.value.get(value_refs, "train")[0])
        return stats

    # 7
    def sync_phase(self) -> int:
        refs = [r for rank_refs in self.policy.call("weight_buckets", self.cfg.ppo.sync_bucket_mb) for r in rank_refs]
        return self.rollout.call("load_weights", *refs)[0]

    # 8
    def monitor_phase(self, step: int, rollout: Rollout, rm_scores: torch.Tensor, adv: Advantages, train: dict,
                      timings: dict) -> StepResult:
        mask = rollout.tokens.action_mask
        lengths = mask.sum(-1)
        metrics = {
            "reward/rm_mean": float(rm_scores.mean()), "reward/rm_std": float(rm_scores.std(unbiased=False)),
            **adv.reward_metrics, "kl": float(adv.seq_kl.mean()), "kl_coef": adv.kl_coef,
            "kl_scale": self.kl_scale, "kl_k3": adv.seq_kl_k3,
            "kl_per_token": float(adv.seq_kl.sum() / max(float(mask.sum()), 1.0)),
            "response_tokens_mean": float(lengths.mean()), "response_chars_mean":
                sum(len(r) for r in rollout.responses) / len(rollout.responses),
            "finished_share": rollout.finished, **train,
            "rollout_tokens_per_s": rollout.generated_tokens / max(timings["rollout"], 1e-9),
            "lr": self.policy_lr, **{f"time/{k}": v for k, v in timings.items()},
        }
        by_prompt: dict[str, list[str]] = {}
        for key, text in zip(rollout.prompt_keys, rollout.responses):
            by_prompt.setdefault(key, []).append(text)
        health = {"loss": train["policy/loss"], "grad_norm": train["policy/grad_norm"], "kl": metrics["kl"],
                  "entropy": train["policy/entropy"], "rm_reward": metrics["reward/rm_mean"]}
        alarms = self.monitor.observe(step, health, by_prompt) if self.cfg.ppo.monitor.enabled else []
        # Logged with the monitors off too, so monitored and unmonitored runs (ablations) stay comparable.
        response_stats = self.monitor.last_response_metrics if self.cfg.ppo.monitor.enabled \
            else response_metrics(by_prompt, self.monitor.phrases)
        metrics.update({f"health/{name}": value for name, value in response_stats.items()})
        result = StepResult(metrics, alarms)
        self._nan_guard(train)
        self._act_on(alarms, step, result)
        return result

    def _nan_guard(self, train: dict) -> None:
        if train.get("policy/nan_skipped", 0) or train.get("value/nan_skipped", 0):
            self.nan_streak += 1
            log.warning("NaN/Inf loss: %d policy and %d value mini-batches skipped (streak %d)",
                        train.get("policy/nan_skipped", 0), train.get("value/nan_skipped", 0), self.nan_streak)
            if self.nan_streak >= self.cfg.ppo.max_nan_steps:
                raise TooManyNaNSteps(f"{self.nan_streak} consecutive PPO steps had NaN/Inf losses "
                                      f"(ppo.max_nan_steps={self.cfg.ppo.max_nan_steps}); stopping")
        else:
            self.nan_streak = 0

    def _act_on(self, alarms: list, step: int, result: StepResult) -> None:
        for alarm in alarms:
            log.warning("alarm at step %d: %s", step, alarm.message)
        action = most_severe_action(alarms)
        mon = self.cfg.ppo.monitor
        if action == "raise_kl":
            self.kl_scale *= mon.kl_raise_factor
        elif action == "rollback":
            target = self.monitor.rollback_target(self.checkpoint_steps())
            if target is not None:
                self.load_checkpoint(target)
                self.policy_lr *= mon.rollback_lr_factor
                self.policy.call("set_lr", self.policy_lr)
                self.monitor.rolled_back_to(target)
                result.metrics["rolled_back_to"] = target
        elif action == "stop":
            result.stop = True
        result.metrics["alarms"] = len(alarms)
        result.metrics["action"] = action or "none"

    # ---- checkpoints -----------------------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        return sorted(int(p.name.split("_")[1]) for p in self.ckpt_dir.glob("step_*") if (p / "state.json").exists())

    def save_checkpoint(self, step: int) -> None:
        """Policy and value shards, then the driver state; state.json is written last and marks it complete."""
        folder = self.ckpt_dir / f"step_{step:06d}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        self.policy.call("save", str(folder))
        if self.value is not None:
            self.value.call("save", str(folder))
        state = {"step": step, "kl_scale": self.kl_scale, "policy_lr": self.policy_lr,
                 "controller_coef": getattr(self.controller, "coef", None),
                 "rollout_calls": step, "nan_streak": self.nan_streak}
        tmp = folder / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(folder / "state.json")
        for old in self.checkpoint_steps()[:-2]:
            shutil.rmtree(self.ckpt_dir / f"step_{old:06d}", ignore_errors=True)

    def load_checkpoint(self, step: int) -> dict:
        folder = self.ckpt_dir / f"step_{step:06d}"
        self.policy.call("load", str(folder))
        if self.value is not None:
            self.value.call("load", str(folder))
        state = json.loads((folder / "state.json").read_text())
        self.sync_phase()
        self.rollout.call("set_calls", state["rollout_calls"])
        return state

    def resume(self) -> None:
        steps = self.checkpoint_steps()
        if not steps:
            self.metrics.truncate_after(0)  # a run that died before its first checkpoint starts over
            return
        state = self.load_checkpoint(steps[-1])
        self.step_index = state["step"]
        self.kl_scale, self.policy_lr, self.nan_streak = state["kl_scale"], state["policy_lr"], state["nan_streak"]
        self.policy.call("set_lr", self.policy_lr)
        if state["controller_coef"] is not None:
            self.controller.coef = state["controller_coef"]
        self.metrics.truncate_after(self.step_index)
        log.warning("resumed PPO from step %d", self.step_index)

    # ---- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict:
        from tqdm import tqdm

        ppo = self.cfg.ppo
        bar = tqdm(total=ppo.steps, initial=self.step_index, desc="ppo", mininterval=1.0)
        last: dict = {}
        while self.step_index < ppo.steps:
            step = self.step_index + 1
            result = self.step(step)
            self.step_index = step
            last = result.metrics
            self.metrics.log(step, {**last, **{f"alarm/{a.monitor}": a.value for a in result.alarms}})
            for alarm in result.alarms:
                self._record_alarm(alarm)
            bar.update(1)
            bar.set_postfix(rm=f"{last['reward/rm_mean']:.3f}", kl=f"{last['kl']:.3f}")
            if step % ppo.save_every == 0 or step == ppo.steps or result.stop or self.preempted.is_set():
                self.save_checkpoint(step)
            if result.stop:
                log.warning("stopping PPO at step %d on a monitor alarm", step)
                break
            if self.preempted.is_set():
                log.warning("stopping PPO after step %d on SIGTERM; checkpoint saved", step)
                break
        bar.close()
        self.metrics.close()
        self.record_answers("after")
        return last

    def _record_alarm(self, alarm) -> None:
        with (self.output_dir / "alarms.jsonl").open("a") as handle:
            handle.write(json.dumps(alarm.to_dict()) + "\n")

    def record_answers(self, stage: str) -> None:
        """Greedy answers to ppo.report_prompts, kept for the run report's before/after table."""
        from jobs.ppo_report import write_answers

        prompts = list(self.cfg.ppo.report_prompts)
        write_answers(self.output_dir, stage, prompts, self.greedy_answers(prompts) if prompts else [])

    def greedy_answers(self, prompts: list[str]) -> list[str]:
        """Greedy answers of the current policy weights (as synced to the first rollout engine) to user prompts,
        each rendered through ppo.prompt_template like the training prompts."""
        template = self.cfg.ppo.prompt_template
        ids = [self._encode_prompt([{"role": "user", "content": template.replace("{prompt}", p)}]) for p in prompts]
        responses = self.rollout.call_rank0("greedy", ids, self.cfg.ppo.report_max_new_tokens)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]

    def export(self) -> str | None:
        start_model = str(resolve_path(self.cfg.ppo.init_model or self.cfg.model.path))
        return self.policy.call("export", str(self.output_dir / "model"), start_model)[0]

    def shutdown(self) -> None:
        """Kill whatever roles were started (start-up may have failed half way) and free their resources."""
        from cluster.placement import release

        for name in ("rollout", "policy", "value", "reference"):
            group = getattr(self, name, None)
            if group is not None:
                group.kill()
        for placement in {id(p): p for p in getattr(self, "placement", {}).values()}.values():
            release(placement)


@contextlib.contextmanager
def timed(timings: dict, phase: str):
    started = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - started
