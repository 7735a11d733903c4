"""The PPO driver: owns the role actors (actors/ppo_roles.py) and runs one step as eight numbered, timed phases.

    1 rollout    vLLM engine actors sample ppo.samples_per_prompt responses per prompt (ppo.async_rollouts: the
                 batch was sampled during the previous step, and the next one starts sampling now; with
                 ppo.environment, multi-turn episodes: actors/episodes.py)
    2 score      reward source (reward-model actor, HTTP service or programmatic) → preference scores, and the
                 plug-in reward functions
   2b dynamic    (ppo.dynamic_sampling, group estimators) groups that all scored alike dropped, more sampled
    3 reference  policy (old) and reference log-probs of the sampled tokens, in parallel
    4 values     value actor (skipped by the critic-free estimators: grpo, rloo, reinforce_baseline)
    5 advantages mixed reward, per-token KL penalty, then GAE or a group baseline, whitening — pure functions
    6 train      policy and value ranks update in parallel (DeepSpeed ZeRO, ppo_epochs × mini-batches)
    7 sync       new policy weights → every vLLM engine through the object store or a broadcast group
                 (ppo.weight_sync, actors/ppo_weight_sync.py; no disk round trip)
    8 monitor    metrics and training-health alarms

The phases run from one ordered table (PHASES), which also names their timings. The actions the alarms call for
(raise the KL, roll back, stop) then run in a step of their own (`act`), and every ppo.eval_every steps the
held-out prompts are answered (`evaluate`). The driver holds token ids and per-token tensors only; model
weights live in the actors.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Callable

import torch

from actors import modeling, ppo_checkpoints
from actors.algo import make_kl_controller, mean_pass_at_k, spread_groups
from actors.algo.lexicon import Lexicon
from actors.algo.monitors import HealthMonitor, most_severe_action
from actors.algo.response_stats import response_metrics
from actors.algo.sampling import fill_dropped
from actors.chat import encode_prompt
from actors.episodes import episode_metrics, run_episodes
from actors.ppo_advantages import compute_advantages, rewards_before_kl
from actors.ppo_metrics import step_metrics
from actors.ppo_prompts import hold_out, load_prompts, prompts_for_extra_round, prompts_for_step
from actors.ppo_roles import PPORoles, engine_callbacks, episode_tokens
from actors.ppo_step import (Advantages, DynamicSampling, LogProbs, PendingRollout, Rollout, Scores, StepResult,
                             StepState, progress_before, timed)
from actors.ppo_weight_sync import WeightSync
from actors.protocol import PolicyBatch, TokenBatch, ValueBatch, shard
from actors.rollout.sample import Sample, eval_draw, extra_round_draw, turn_draw
from common.config import Config, resolve_path
from common.errors import TooManyNaNSteps
from common.metrics import MetricsLogger

log = logging.getLogger("rayalign.ppo")
# Greedy answers for the run report: (stage "before" | "after", prompts, answers) → written by the job.
AnswersSink = Callable[[str, list[str], list[str]], None]


# ---- the driver -----------------------------------------------------------------------------------------
class PPOLoop:
    def __init__(self, cfg: Config, output_dir: Path, on_answers: AnswersSink | None = None):
        self.cfg, self.output_dir, self.on_answers = cfg, Path(output_dir), on_answers
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.step_index = 0
        self.kl_scale = 1.0  # raised by the monitor's raise_kl action
        self.nan_streak = 0
        self.policy_lr = cfg.ppo.lr
        self.preempted = threading.Event()  # set on SIGTERM (actors/ppo_supervisor.py): finish the step, stop
        self.roles = PPORoles()
        self.metrics: MetricsLogger | None = None
        self.engine_version = 0  # the step whose policy update the rollout engines hold
        self.prefetched: PendingRollout | None = None  # ppo.async_rollouts: the next step's batch, being sampled
        self.weight_sync: WeightSync | None = None  # phase 7's transport, once the roles are up

    # ---- start-up --------------------------------------------------------------------------------------
    def start(self) -> None:
        cfg, ppo = self.cfg, self.cfg.ppo
        start_model = str(resolve_path(cfg.ppo_start_model))
        self.tokenizer = modeling.load_tokenizer(start_model, cfg.model.chat_template)
        self.prompts, self.eval_prompts = load_prompts(ppo), []
        if ppo.eval_every:
            train, held = hold_out(len(self.prompts), ppo.eval_prompts, cfg.run.seed)
            self.prompts, self.eval_prompts = [self.prompts[i] for i in train], [self.prompts[i] for i in held]
        self.prompt_ids = [self._encode_prompt(p.turns) for p in self.prompts]
        self.eval_prompt_ids = [self._encode_prompt(p.turns) for p in self.eval_prompts]
        self.lexicon = Lexicon.load(resolve_path(ppo.reward.safety_lexicon_dir)) \
            if "safety" in ppo.reward.enabled_terms else None
        self.controller = make_kl_controller(ppo.kl.controller, coef=ppo.kl.coef, schedule=ppo.kl.schedule,
                                             target=ppo.kl.target, horizon=ppo.kl.horizon)
        self.monitor = HealthMonitor(ppo.monitor)
        revive, replaced = engine_callbacks(self.roles, self.output_dir, ppo.sync_bucket_mb, lambda: self.step_index,
                                            self.engines_changed)
        self.roles.start(cfg, start_model, revive, replaced)
        self.weight_sync = WeightSync(self.roles, ppo)
        self.weight_sync.prepare()
        self.metrics = MetricsLogger(self.output_dir)
        self.resume()
        if self.step_index == 0:
            self.record_answers("before")
            if self.eval_prompts:  # the held-out score before any update: what evaluation is measured against
                self.metrics.log(0, self.evaluate(0))

    def _encode_prompt(self, messages: list[dict]) -> list[int]:
        return encode_prompt(self.tokenizer, messages, self.cfg.ppo.rollout.max_prompt_tokens)

    def write_roster(self) -> Path:
        return self.roles.write_roster(self.output_dir, self.cfg)

    def engines_changed(self) -> None:
        """An engine was replaced: the roster names the new one, and a collective sync takes it into its group."""
        self.write_roster()
        if self.weight_sync is not None:
            self.weight_sync.regroup()

    # ---- the step --------------------------------------------------------------------------------------
    def step(self, step: int) -> StepResult:
        """One PPO step: the phases of PHASES in order, each timed, then the alarms' actions and (when due) the
        held-out evaluation."""
        state = StepState(step, progress=progress_before(step, self.cfg.ppo.steps))
        for name, phase in PHASES:
            with timed(state.timings, name):
                setattr(state, name, phase(self, state))
        result = state.monitor
        with timed(state.timings, "act"):
            self.act(step, result)
        if self.eval_prompts and (step % self.cfg.ppo.eval_every == 0 or step == self.cfg.ppo.steps):
            with timed(state.timings, "eval"):
                result.metrics.update(self.evaluate(step))
        # 1 when phase 7 broadcast over the weight-sync group, 0 through the object store (by choice or fallback).
        result.metrics["sync/collective"] = float(self.weight_sync.last_collective)
        result.metrics.update({f"time/{name}": seconds for name, seconds in state.timings.items()})
        result.metrics["time/step"] = sum(state.timings.values())
        return result

    # 1
    def rollout_phase(self, s: StepState) -> Rollout:
        if self.cfg.ppo.environment.name is not None:
            return self._episode_rollout(self._step_prompts(s.step), s.step)
        pending, self.prefetched = self.prefetched, None
        if pending is None or pending.step != s.step:
            pending = self._start_rollout(self._step_prompts(s.step), s.step)
        rollout = self._finish_rollout(pending)
        if self.cfg.ppo.async_rollouts and s.step < self.cfg.ppo.steps:
            # The next step's batch is sampled while this one scores, trains and syncs: one update behind.
            self.prefetched = self._start_rollout(self._step_prompts(s.step + 1), s.step + 1)
        return rollout

    def _step_prompts(self, step: int) -> list[int]:
        return prompts_for_step(len(self.prompts), self.cfg.ppo.rollout_batch_size, step, self.cfg.run.seed)

    def _rollout(self, prompts: list[int], step: int, draw: int | None = None) -> Rollout:
        """samples_per_prompt sampled answers to each of the training prompts `prompts`, from the training seed
        stream or from `draw` (actors/rollout/sample.py)."""
        return self._finish_rollout(self._start_rollout(prompts, step, draw))

    def _start_rollout(self, prompts: list[int], step: int, draw: int | None = None) -> PendingRollout:
        picked = [i for i in prompts for _ in range(self.cfg.ppo.samples_per_prompt)]  # each group is contiguous
        # The training stream's draw is the step itself, named here: the engines' own call counters gave the same
        # number in an unbroken run, but an engine replaced during a sync was revived one step behind (and a
        # rollback's set_calls left the counters off the checkpoints' step).
        chunks, refs = self._submit_samples([self.prompt_ids[i] for i in picked], step if draw is None else draw)
        return PendingRollout(step, picked, chunks, refs, self.engine_version)

    def _finish_rollout(self, pending: PendingRollout) -> Rollout:
        samples = pending.samples if pending.samples is not None else self._collect_samples(pending.chunks,
                                                                                              pending.refs)
        return self._assemble(pending.picked, samples,
                              [self.tokenizer.decode(x.response_ids, skip_special_tokens=True) for x in samples],
                              [pending.version] * len(samples))

    def _sample(self, prompt_ids: list[list[int]], draw: int | None = None) -> list:
        return self._collect_samples(*self._submit_samples(prompt_ids, draw))

    def _submit_samples(self, prompt_ids: list[list[int]], draw: int | None = None) -> tuple[list[tuple], list]:
        """One answer per prompt, the prompts split over the engines in contiguous runs; returns each engine's
        arguments and result ref. first_index: every response gets its own seed, whichever engine samples it (a
        group split over two engines would otherwise draw the same answers twice)."""
        engines = self.roles.rollout
        cuts = [len(prompt_ids) * i // len(engines) for i in range(len(engines) + 1)]
        chunks = [(prompt_ids[cuts[i]:cuts[i + 1]], None, None, cuts[i], draw) for i in range(len(engines))]
        return chunks, engines.submit("generate", per_rank=chunks)

    def _collect_samples(self, chunks: list[tuple], refs: list) -> list:
        return [sample for part in self.roles.rollout.settle("generate", refs, chunks) for sample in part]

    def _episode_rollout(self, prompts: list[int], step: int, round_index: int = 0) -> Rollout:
        """samples_per_prompt multi-turn episodes per prompt with the environment (ppo.environment); round_index:
        dynamic sampling's round."""
        picked = [i for i in prompts for _ in range(self.cfg.ppo.samples_per_prompt)]
        episodes = self._episodes([self.prompts[i] for i in picked], step, round_index=round_index)
        rollout = self._assemble(picked, [e.sample() for e in episodes], ["\n".join(e.texts) for e in episodes],
                                 [self.engine_version] * len(episodes))
        rollout.env_rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
        rollout.env_metrics = episode_metrics(episodes, self.cfg.ppo.environment.max_turns)
        rollout.conversations = [e.for_scoring() for e in episodes]
        for e, source in [(e, p.source) for e, p in zip(episodes, (self.prompts[i] for i in picked)) if e.error][:3]:
            log.warning("environment %s ended the episode of the prompt from %s (reward 0): %s",
                        self.cfg.ppo.environment.name, source, e.error)
        return rollout

    def _episodes(self, prompts: list, step: int, greedy: bool = False, round_index: int = 0) -> list:
        """Episodes of the environment on these prompts: sampled (turn 0 of the first round from the training seed
        stream, every other turn from a stream of its own) or greedy (held-out evaluation)."""
        ppo, env = self.cfg.ppo, self.cfg.ppo.environment
        new = ppo.rollout.max_new_tokens

        def generate(ids: list[list[int]], turn: int) -> list[Sample]:
            if greedy:
                answers = self.roles.rollout.call_rank0("greedy", ids, new)
                return [Sample(prompt, list(answer), [], "stop") for prompt, answer in zip(ids, answers)]
            first = turn == 0 and round_index == 0
            return self._sample(ids, step if first else turn_draw(step, turn, round_index))  # step: as _start_rollout

        openings = self.roles.environments.reset([{"messages": p.turns, **p.columns} for p in prompts])
        return run_episodes(self.tokenizer, openings, [p.turns for p in prompts], generate,
                            self.roles.environments.step, env.max_turns, ppo.rollout.max_prompt_tokens, new,
                            episode_tokens(ppo), env.max_observation_chars)

    def _assemble(self, picked: list[int], samples: list, responses: list[str], versions: list[int]) -> Rollout:
        """The rollout of these samples (row i answers training prompt picked[i], decoded as responses[i], sampled
        by the policy of step versions[i])."""
        tokens = TokenBatch.from_samples([x.prompt_ids for x in samples], [x.response_ids for x in samples],
                                         self.tokenizer.pad_token_id, [x.response_mask for x in samples])
        return Rollout(prompts=[self.prompts[i].turns for i in picked], prompt_keys=[str(i) for i in picked],
                       responses=responses, tokens=tokens,
                       behaviour=tokens.per_token([x.response_logprobs for x in samples]),
                       generated_tokens=sum(len(x.response_ids) for x in samples),
                       finished=sum(x.finish_reason == "stop" for x in samples) / len(samples),
                       columns=[self.prompts[i].columns for i in picked],
                       sources=[self.prompts[i].source for i in picked], samples=samples, picked=picked,
                       versions=versions)

    # 2
    def score_phase(self, s: StepState) -> Scores:
        prompts, responses = s.rollout.scored()
        scores = self._score(prompts, responses, s.rollout.columns, s.rollout.sources)
        if s.rollout.env_rewards is not None:
            scores.functions["env"] = s.rollout.env_rewards
        return scores

    def _score(self, prompts: list[list[dict]], responses: list[str], columns: list[dict],
               sources: list[str]) -> Scores:
        """The preference score (when the rm term is on) and every plug-in reward function's."""
        rm = torch.zeros(len(responses))
        if "rm" in self.cfg.ppo.reward.enabled_terms:
            rm = torch.tensor(self.roles.reward.score(prompts, responses), dtype=torch.float32)
        if self.roles.functions is None:
            return Scores(rm)
        return Scores(rm, *self.roles.functions.score(prompts, responses, columns, sources))

    # 2b
    def dynamic_phase(self, s: StepState) -> DynamicSampling | None:
        """DAPO's dynamic sampling (ppo.dynamic_sampling): keep the groups whose answers earned different rewards,
        sample rollout_batch_size more prompts round after round until that many such groups are in hand (or
        max_rounds is reached, when dropped groups fill the rest), then put the kept groups in place of the step's
        rollout and scores."""
        ppo = self.cfg.ppo
        if not ppo.dynamic_sampling.enabled:
            return None
        size, wanted = ppo.samples_per_prompt, ppo.rollout_batch_size
        rounds = [(s.rollout, s.score)]
        kept, dropped = [], []  # (round, group)
        while True:
            rollout, scores = rounds[-1]
            spread = spread_groups(rewards_before_kl(ppo, rollout, scores, self.lexicon), size)
            for group, has_spread in enumerate(spread.tolist()):
                (kept if has_spread else dropped).append((len(rounds) - 1, group))
            if len(kept) >= wanted or len(rounds) == ppo.dynamic_sampling.max_rounds:
                break
            prompts = prompts_for_extra_round(len(self.prompts), wanted, s.step, len(rounds), self.cfg.run.seed)
            if ppo.environment.name is not None:
                rollout = self._episode_rollout(prompts, s.step, len(rounds))
            else:
                rollout = self._rollout(prompts, s.step, draw=extra_round_draw(s.step, len(rounds)))
            rounds.append((rollout, self.score_phase(StepState(s.step, s.progress, rollout=rollout))))
        filled = dropped[:max(wanted - len(kept), 0)]
        rows = [(r, group * size + j) for r, group in kept[:wanted] + filled for j in range(size)]
        taken = [(rounds[r][0], row) for r, row in rows]
        s.rollout = self._assemble([source.picked[row] for source, row in taken],
                                   [source.samples[row] for source, row in taken],
                                   [source.responses[row] for source, row in taken],
                                   [source.versions[row] for source, row in taken])
        s.rollout.generated_tokens = rounds[0][0].generated_tokens  # the extra rounds' are logged on their own
        s.rollout.env_metrics = rounds[0][0].env_metrics  # what a fresh draw of episodes earns
        s.score = Scores.gather([scores for _, scores in rounds], rows)
        return DynamicSampling(rounds=len(rounds), groups_sampled=len(kept) + len(dropped),
                               groups_kept=min(len(kept), wanted), groups_filled=len(filled),
                               extra_tokens=sum(r.generated_tokens for r, _ in rounds[1:]))

    # 3
    def reference_phase(self, s: StepState) -> LogProbs:
        policy, tokens = self.roles.policy, s.rollout.tokens
        shards = [(part,) for part in shard(tokens, len(policy))]
        old_refs = policy.submit("old_logprobs", per_rank=shards)
        if self.roles.reference is not None:
            ref = self.roles.reference.call("logprobs", tokens)[0]
        else:
            ref = torch.cat(policy.call("logprobs", per_rank=[(part[0], True) for part in shards]))
        ratio_parts, kl_parts = zip(*policy.get(old_refs, "old_logprobs"))
        # Filled only in the rows the policy's current weights sampled (lock-step): a row sampled one update
        # behind keeps the newer policy's −inf for the rollout correction to read (actors/algo/sampling.py).
        old, dropped = fill_dropped(torch.cat(ratio_parts), s.rollout.behaviour, tokens.action_mask,
                                    s.rollout.sampled_by(self.engine_version))
        return LogProbs(old=old, ref=ref, kl_old=torch.cat(kl_parts), dropped_share=float(dropped))

    # 4
    def values_phase(self, s: StepState) -> torch.Tensor:
        value, tokens = self.roles.value, s.rollout.tokens
        if value is None:  # critic-free estimators: nothing to ask
            return torch.zeros(tokens.action_mask.shape, dtype=torch.float32)
        return torch.cat(value.call("values", per_rank=[(part,) for part in shard(tokens, len(value))]))

    # 5
    def advantages_phase(self, s: StepState) -> Advantages:
        kl_coef = self.controller.value(s.progress) * self.kl_scale
        adv = compute_advantages(self.cfg.ppo, s.rollout, s.score, s.reference, s.values, kl_coef, self.lexicon)
        self.controller.update(float(adv.seq_kl.mean()), len(s.rollout.responses))
        return adv

    # 6
    def train_phase(self, s: StepState) -> dict:
        tokens, logps, adv = s.rollout.tokens, s.reference, s.advantages
        policy, value = self.roles.policy, self.roles.value
        seed = self.cfg.run.seed * 100_003 + s.step
        advantages = adv.advantages
        if s.step == self.cfg.ppo.inject_nan_at_step:  # fault injection: lets the NaN guard and rollback be shown
            advantages = torch.full_like(advantages, float("nan"))
        policy_batch = PolicyBatch(tokens.input_ids, tokens.attention_mask, tokens.action_mask,
                                   self._ratio_old(s), logps.ref, advantages, s.rollout.behaviour)
        policy_refs = policy.submit("train", per_rank=[(part, seed, adv.kl_loss_coef)
                                                        for part in shard(policy_batch, len(policy))])
        value_refs = None
        if value is not None:
            value_batch = ValueBatch(tokens.input_ids, tokens.attention_mask, tokens.action_mask, s.values,
                                     adv.returns)
            value_refs = value.submit("train", per_rank=[(part, seed) for part in shard(value_batch, len(value))])
        stats = policy.get(policy_refs, "train")[0]
        if value_refs is not None:
            stats.update(value.get(value_refs, "train")[0])
        return stats

    def _ratio_old(self, s: StepState) -> torch.Tensor:
        """PPO's π_old. Lock-step: the policy before this update (ppo.trainer_logprobs). A batch sampled one update
        behind (ppo.async_rollouts) without a rollout correction: the engine's log-probs, the distribution that
        actually sampled, so the ratio is exact; with tis / mask the policy's, corrected towards the engine's."""
        if self.cfg.ppo.async_rollouts and self.cfg.ppo.rollout_correction == "none":
            return s.rollout.behaviour
        return s.reference.old

    # 7
    def sync_phase(self, s: StepState) -> int:
        loaded = self.sync_weights()
        self.engine_version = s.step
        return loaded

    def sync_weights(self) -> int:
        """The policy's current weights into every rollout engine; returns tensors loaded per engine."""
        return self.weight_sync()

    # 8
    def monitor_phase(self, s: StepState) -> StepResult:
        metrics = step_metrics(s, self.kl_scale, self.policy_lr)
        by_prompt: dict[str, list[str]] = {}
        for key, text in zip(s.rollout.prompt_keys, s.rollout.responses):
            by_prompt.setdefault(key, []).append(text)
        health = health_inputs(metrics, s.train, self.cfg.ppo.monitor.gold_reward)
        monitored = self.cfg.ppo.monitor.enabled
        alarms = self.monitor.observe(s.step, health, by_prompt) if monitored else []
        # Logged with the monitors off too, so monitored and unmonitored runs (ablations) stay comparable.
        response_stats = self.monitor.last_response_metrics if monitored \
            else response_metrics(by_prompt, self.monitor.phrases)
        metrics.update({f"health/{name}": value for name, value in response_stats.items()})
        return StepResult(metrics, alarms)

    # held-out evaluation (every ppo.eval_every steps and at the last)
    def evaluate(self, step: int) -> dict:
        """Greedy answers of the just-synced weights to prompts training never sees, scored by the reward source:
        a rising training reward with a flat held-out one is memorisation, not learning. Greedy, so the sampling
        seed stream (and with it a resumed run's rollouts) is left alone; with ppo.eval_samples = k > 1, also k
        answers per prompt at the rollout temperature, from a seed stream of their own."""
        held, episodes = self.eval_prompts, None
        prompts = [p.turns for p in held]
        if self.cfg.ppo.environment.name is not None:
            episodes = self._episodes(held, step, greedy=True)
            responses = ["\n".join(e.texts) for e in episodes]
            prompts, scored = (list(part) for part in zip(*(e.for_scoring() for e in episodes)))
        else:
            ids = self.roles.rollout.call_rank0("greedy", self.eval_prompt_ids, self.cfg.ppo.rollout.max_new_tokens)
            responses = scored = [self.tokenizer.decode(r, skip_special_tokens=True) for r in ids]
        metrics = {"eval/response_chars_mean": sum(len(r) for r in responses) / len(responses)}
        scores = self._score(prompts, scored, [p.columns for p in held], [p.source for p in held])
        if episodes is not None:
            metrics.update({f"eval/env_{k.partition('/')[2]}": v for k, v in
                            episode_metrics(episodes, self.cfg.ppo.environment.max_turns).items()})
        if "rm" in self.cfg.ppo.reward.enabled_terms:
            metrics["eval/rm_mean"] = float(scores.rm.mean())
        metrics.update({f"eval/{name}_mean": float(values.mean()) for name, values in scores.functions.items()})
        if self.cfg.ppo.eval_samples > 1:
            metrics.update(self._evaluate_sampled(step, self.cfg.ppo.eval_samples))
        return metrics

    def _evaluate_sampled(self, step: int, k: int) -> dict:
        """mean@k of every term over k sampled answers per held-out prompt, and pass@1 / pass@k of the reward
        functions that say what success is (success_at)."""
        held = [p for p in self.eval_prompts for _ in range(k)]
        samples = self._sample([ids for ids in self.eval_prompt_ids for _ in range(k)], draw=eval_draw(step))
        responses = [self.tokenizer.decode(x.response_ids, skip_special_tokens=True) for x in samples]
        scores = self._score([p.turns for p in held], responses, [p.columns for p in held], [p.source for p in held])
        metrics = {}
        if "rm" in self.cfg.ppo.reward.enabled_terms:
            metrics[f"eval/rm_mean@{k}"] = float(scores.rm.mean())
        for function in self.cfg.ppo.reward.functions:
            values = scores.functions[function.term].view(-1, k)  # one row per prompt
            metrics[f"eval/{function.term}_mean@{k}"] = float(values.mean())
            if function.success_at is not None:
                solved = values >= function.success_at
                metrics[f"eval/{function.term}_pass@1"] = mean_pass_at_k(solved, 1)
                metrics[f"eval/{function.term}_pass@{k}"] = mean_pass_at_k(solved, k)
        return metrics

    # ---- what the monitor's alarms call for ------------------------------------------------------------
    def act(self, step: int, result: StepResult) -> None:
        """The NaN guard, then the most severe action of the step's alarms: raise the KL, roll back to the last
        healthy checkpoint (and lower the learning rate), or stop."""
        self._nan_guard(result.metrics)
        for alarm in result.alarms:
            log.warning("alarm at step %d: %s", step, alarm.message)
        action = most_severe_action(result.alarms)
        mon = self.cfg.ppo.monitor
        if action == "raise_kl":
            self.kl_scale *= mon.kl_raise_factor
        elif action == "rollback":
            target = self.monitor.rollback_target(self.checkpoint_steps())
            if target is not None:
                self.load_checkpoint(target)
                # The newer checkpoints hold the weights rolled back: a resume (which takes the newest) would
                # undo the rollback, and a later rollback could pick one. The state after it is saved as this step,
                # once the step is logged (run()).
                ppo_checkpoints.discard_after(self.ckpt_dir, target)
                # The steps go on counting from here: the engines hold the weights step+1 trains from, so its
                # batch is on-policy (rollout/staleness 0, not step - target).
                self.engine_version = step
                self.policy_lr *= mon.rollback_lr_factor
                self.roles.policy.call("set_lr", self.policy_lr)
                self.monitor.rolled_back_to(target)
                result.metrics["rolled_back_to"] = target
                result.checkpoint = True
            else:
                log.warning("alarm at step %d asks for a rollback, but no checkpoint is left from before the last "
                            "healthy step: training goes on with these weights", step)
                action = "rollback_unavailable"
                if self.checkpoint_steps():  # never to come: older checkpoints are only pruned
                    self.monitor.rollback_impossible()
        elif action == "stop":
            result.stop = True
        result.metrics["alarms"] = len(result.alarms)
        result.metrics["action"] = action or "none"

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

    # ---- checkpoints -----------------------------------------------------------------------------------
    def _trained(self) -> list:
        return [group for group in (self.roles.policy, self.roles.value) if group is not None]

    def checkpoint_steps(self) -> list[int]:
        return ppo_checkpoints.checkpoint_steps(self.ckpt_dir)

    def save_checkpoint(self, step: int) -> None:
        state = {"step": step, "kl_scale": self.kl_scale, "policy_lr": self.policy_lr,
                 "controller_coef": getattr(self.controller, "coef", None),
                 "rollout_calls": step, "nan_streak": self.nan_streak, "monitor": self.monitor.state()}
        pending = self.prefetched
        if pending is not None and pending.step == step + 1:
            # ppo.async_rollouts: the next step's batch, sampled by the weights before this step's update, is kept
            # with the checkpoint. Resampled on resume by the newer weights, it would be on-policy where the
            # unbroken run's was one update behind. Collecting it here only waits earlier than the next step does.
            if pending.samples is None:
                pending.samples = self._collect_samples(pending.chunks, pending.refs)
            extra = {PREFETCHED_FILE: json.dumps({**pending.to_state(), "sampling": self._sampling()})}
        else:
            extra = {}
        ppo_checkpoints.save(self.ckpt_dir, step, self._trained(), state, extra)

    def load_checkpoint(self, step: int) -> dict:
        """The trained roles' weights and optimizer state of `step`, synced into the engines, whose seed counters
        go back to that step too."""
        state = ppo_checkpoints.load(self.ckpt_dir, step, self._trained())
        self.prefetched = None  # sampled by weights this replaces; the engines run it, then take the new ones
        self.sync_weights()
        self.engine_version = step
        self.roles.rollout.call("set_calls", state["rollout_calls"])
        return state

    def _sampling(self) -> dict:
        rollout = self.cfg.ppo.rollout
        return {key: getattr(rollout, key) for key in SAMPLING_KEYS}

    def _kept_batch(self, path: Path) -> PendingRollout | None:
        """The batch the checkpoint kept (ppo.async_rollouts), when this run would have sampled the same prompts the
        same way (else None, with a warning: a changed batch size, prompt set, seed or sampler, or lock-step now)."""
        step = self.step_index + 1
        if not path.is_file() or step > self.cfg.ppo.steps:
            return None
        saved = json.loads(path.read_text())
        expected = [i for i in self._step_prompts(step) for _ in range(self.cfg.ppo.samples_per_prompt)]
        problem = kept_batch_problem(saved, step, expected, self.prompt_ids, self._sampling(),
                                     bool(self.cfg.ppo.async_rollouts) and self.cfg.ppo.environment.name is None)
        if problem:
            log.warning("the batch sampled ahead in the step-%d checkpoint is not used: %s; step %d samples afresh",
                        self.step_index, problem, step)
            return None
        return PendingRollout.from_state(saved)

    def resume(self) -> None:
        steps = self.checkpoint_steps()
        if not steps:
            self.metrics.truncate_after(-1)  # a run that died before its first checkpoint starts over
            return
        state = self.load_checkpoint(steps[-1])
        self.step_index = state["step"]
        self.kl_scale, self.policy_lr, self.nan_streak = state["kl_scale"], state["policy_lr"], state["nan_streak"]
        self.roles.policy.call("set_lr", self.policy_lr)
        if state["controller_coef"] is not None:
            self.controller.coef = state["controller_coef"]
        if "monitor" in state:  # checkpoints written before the monitor's state was saved have none
            self.monitor.restore(state["monitor"])
        self.prefetched = self._kept_batch(ppo_checkpoints.folder_of(self.ckpt_dir, self.step_index) / PREFETCHED_FILE)
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
            sigterm = self.preempted.is_set()  # read once: a SIGTERM between two reads left the step unsaved
            if step % ppo.save_every == 0 or step == ppo.steps or result.stop or result.checkpoint or sigterm:
                self.save_checkpoint(step)
            if result.stop:
                log.warning("stopping PPO at step %d on a monitor alarm", step)
                break
            if sigterm and step < ppo.steps:
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
        """Greedy answers to ppo.report_prompts for the run report's before/after table, handed to the job."""
        if self.on_answers is None:
            return
        prompts = list(self.cfg.ppo.report_prompts)
        self.on_answers(stage, prompts, self.greedy_answers(prompts) if prompts else [])

    def greedy_answers(self, prompts: list[str]) -> list[str]:
        """Greedy answers of the current policy weights (as synced to the first rollout engine) to user prompts,
        each rendered through ppo.prompt_template like the training prompts."""
        template = self.cfg.ppo.prompt_template
        ids = [self._encode_prompt([{"role": "user", "content": template.replace("{prompt}", p)}]) for p in prompts]
        responses = self.roles.rollout.call_rank0("greedy", ids, self.cfg.ppo.report_max_new_tokens)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]

    def export(self) -> str | None:
        start_model = str(resolve_path(self.cfg.ppo_start_model))
        return self.roles.policy.call("export", str(self.output_dir / "model"), start_model)[0]

    def close_metrics(self) -> None:
        """Flush the metrics writer; a successor loop (after a restart) opens the same files again."""
        if self.metrics is not None:
            self.metrics.close()

    def shutdown(self) -> None:
        """Kill whatever roles were started (start-up may have failed half way) and free their resources."""
        self.roles.shutdown()


# The step's phases in order: (name, method). The name is the StepState field the result lands in and the
# `time/<name>` metric, so the two cannot drift apart.
PHASES: tuple[tuple[str, Callable[[PPOLoop, StepState], object]], ...] = (
    ("rollout", PPOLoop.rollout_phase),
    ("score", PPOLoop.score_phase),
    ("dynamic", PPOLoop.dynamic_phase),
    ("reference", PPOLoop.reference_phase),
    ("values", PPOLoop.values_phase),
    ("advantages", PPOLoop.advantages_phase),
    ("train", PPOLoop.train_phase),
    ("sync", PPOLoop.sync_phase),
    ("monitor", PPOLoop.monitor_phase),
)


def health_inputs(metrics: dict, train: dict, gold_reward: str | None) -> dict[str, float]:
    """What the health monitors read from a step (actors/algo/monitors.py), the gold reward being the raw score of
    the reward function ppo.monitor.gold_reward names, when one does."""
    health = {"loss": train["policy/loss"], "grad_norm": train["policy/grad_norm"], "kl": metrics["kl"],
              "entropy": train["policy/entropy"], "rm_reward": metrics["reward/rm_mean"]}
    if gold_reward is not None:
        health["gold_reward"] = metrics[f"reward/{gold_reward}"]
    return health


PREFETCHED_FILE = "prefetched.json"  # beside state.json: the batch sampled ahead, compact (one line)
SAMPLING_KEYS = ("temperature", "top_p", "repetition_penalty", "max_new_tokens")


def kept_batch_problem(saved: dict, step: int, picked: list[int], prompt_ids: list[list[int]], sampling: dict,
                       overlapped: bool) -> str | None:
    """Why a batch a checkpoint kept cannot be step `step`'s in this run, or None: this run must overlap its
    rollouts, pick the same prompts (`picked`, one entry per answer) with the same token ids, and sample them
    with the same settings."""
    if not overlapped:
        return "ppo.async_rollouts is off (or episodes are on) in this run"
    if saved["step"] != step or saved["picked"] != picked:
        return "this run picks other prompts for it (rollout_batch_size, samples_per_prompt, steps or run.seed differ)"
    samples = saved["samples"]
    if any(p >= len(prompt_ids) or prompt_ids[p] != sample["prompt_ids"] for p, sample in zip(picked, samples)):
        return "the prompts' token ids differ (prompt files, template or held-out split changed)"
    if saved.get("sampling") != sampling:
        return f"the sampler changed ({saved.get('sampling')} then, {sampling} now)"
    return None
