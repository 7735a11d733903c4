"""Hardware profiles (SPEC §6) → a resource plan: which stages run (SPEC §4: SFT only, or RLHF by PPO or DPO),
where each role sits, and an estimated memory per GPU (jobs/planning/memory.py) that refuses a recipe which
cannot fit.

A profile is a recipe under configs/ (PROFILE_RECIPES): its `profile` section names the hardware and the task,
the usual sections set precision, quantisation, LoRA or full, ZeRO stage and offload, batch sizes, worker
counts and role placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from common.config import Config, load_config
from common.errors import ConfigError
from common.paths import REPO_ROOT
from common.families import DEFAULT_FAMILY, lora_targets
from jobs.planning.costs import CPU_MFU, CPU_PEAK_TFLOPS_PER_CORE, StageCost, device_for, plan_tokens, stage_cost
from jobs.planning.memory import (GIB, INFERENCE_CHUNK, WEIGHT_BYTES, Memory, ModelShape, engine_reservation,
                                  gpu_engine, inference_memory, kv_per_token, lora_trainable, model_shape,
                                  rollout_memory, training_memory)

PROFILE_RECIPES = {"cpu": "configs/tiny-cpu.yaml", "1x4090": "configs/1x4090.yaml", "2xa100": "configs/2xa100.yaml",
                   "4xa100": "configs/4xa100.yaml", "multi-node": "configs/multi-node.yaml"}
FORMATTED_OUTPUT_TASKS = ("code", "extraction")
OPEN_ENDED_TASKS = ("assistant", "creative", "safety")
RLHF_STAGES = ("reward_model", "ppo", "dpo")


# ---- roles of each stage ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolePlan:
    stage: str
    role: str
    ranks: int
    gpus_per_rank: float
    memory: Memory | None  # per rank; None: the role holds no memory of its own (see note)
    note: str = ""
    problem: str | None = None  # a reason it cannot run that the memory budget alone does not show


def _sft_roles(cfg: Config, shape: ModelShape) -> list[RolePlan]:
    sft = cfg.sft
    memory = training_memory(cfg, shape, cfg.lora.enabled, sft.num_workers, sft.micro_batch_size, cfg.data.max_length)
    return [RolePlan("sft", "policy", sft.num_workers, float(sft.use_gpu), memory,
                     f"micro-batch {sft.micro_batch_size} × accum {sft.grad_accum} × {sft.num_workers} ranks")]


def _reward_model_roles(cfg: Config, shape: ModelShape) -> list[RolePlan]:
    rm = cfg.reward_model
    # Size matching (SPEC §3) makes the policy's shape the reward model's; both replies of a pair go through. The
    # reward backbone loads unquantised (actors/reward.py) and has a scalar head, no vocabulary logits.
    memory = training_memory(cfg, shape, rm.lora, rm.num_workers, 2 * rm.micro_batch_size, rm.max_length,
                             logit_tokens=0, quantized=False)
    return [RolePlan("reward_model", "reward", rm.num_workers, float(rm.use_gpu), memory,
                     f"{rm.micro_batch_size} pairs × accum {rm.grad_accum} × {rm.num_workers} ranks")]


def _dpo_roles(cfg: Config, shape: ModelShape) -> list[RolePlan]:
    dpo = cfg.dpo
    memory = training_memory(cfg, shape, cfg.lora.enabled, dpo.num_workers, 2 * dpo.micro_batch_size, dpo.max_length)
    source = "the policy with adapters disabled" if dpo.reference == "adapter_disabled" else "the start weights"
    return [RolePlan("dpo", "policy", dpo.num_workers, float(dpo.use_gpu), memory,
                     f"{dpo.micro_batch_size} pairs × accum {dpo.grad_accum} × {dpo.num_workers} ranks"),
            RolePlan("dpo", "reference", 0, 0.0, None,
                     f"log-probs precomputed on the policy ranks from {source} before the first update")]


def _ppo_roles(cfg: Config, shape: ModelShape) -> list[RolePlan]:
    ppo, gpus = cfg.ppo, cfg.ppo.gpus_per_actor
    tokens = ppo.rollout.max_prompt_tokens + ppo.rollout.max_new_tokens
    # With model.fused_loss the reference, and the policy below ZeRO-3 (which partitions the head, so it computes
    # every position's logits), project the response tokens alone (actors/scored.py).
    logit_tokens = ppo.rollout.max_new_tokens if shape.response_logits_only(cfg.model.fused_loss) else None
    policy_logit_tokens = logit_tokens if cfg.deepspeed.stage < 3 else None
    where = "colocated in one placement group" if ppo.colocate else f"own placement group ({ppo.placement_strategy})"
    per_engine = math.ceil(ppo.sequences_per_step / ppo.rollout.num_engines)
    engine = rollout_memory(cfg, shape, per_engine, tokens)
    roles = [RolePlan("ppo", "rollout", ppo.rollout.num_engines, gpus, engine,
                      f"vLLM, {per_engine} sequences each{kv_room(cfg, shape, engine, per_engine, tokens)}; {where}",
                      engine_problem(cfg, shape, engine, tokens)),
             RolePlan("ppo", "policy", ppo.policy_workers, gpus,
                      training_memory(cfg, shape, cfg.lora.enabled, ppo.policy_workers,
                                      max(ppo.mini_batch_size // ppo.policy_workers, 1), tokens, policy_logit_tokens),
                      where)]
    if ppo.uses_value_model:
        # The value model trains every parameter of an unquantized backbone (actors/value.py), whatever the
        # policy's LoRA and quantization: sized as the policy's, it fitted on paper at a sixth of its memory.
        roles.append(RolePlan("ppo", "value", ppo.value_workers, gpus,
                              training_memory(cfg, shape, False, ppo.value_workers,
                                              max(ppo.mini_batch_size // ppo.value_workers, 1), tokens, logit_tokens=0,
                                              quantized=False),
                              where))
    else:
        roles.append(RolePlan("ppo", "value", 0, 0.0, None,
                              f"none: {ppo.advantage_estimator} uses the other answers to each prompt as baseline"))
    if ppo.reference == "copy" or not cfg.lora.enabled:
        chunk = min(INFERENCE_CHUNK, ppo.sequences_per_step)
        roles.append(RolePlan("ppo", "reference", 1, gpus, inference_memory(cfg, shape, chunk, tokens, logit_tokens),
                              where))
    else:
        roles.append(RolePlan("ppo", "reference", 0, 0.0, None, "the policy ranks with adapters disabled"))
    if ppo.reward.rm_source == "model":
        roles.append(RolePlan("ppo", "reward", 1, gpus,
                              inference_memory(cfg, shape, cfg.reward_model.score_batch_size, tokens, logit_tokens=0,
                                               quantized=False), where))
    return roles


def kv_room(cfg: Config, shape: ModelShape, engine: Memory, sequences: int, tokens: int) -> str:
    """', KV room for n at once' where a CUDA engine's KV cache holds fewer than its sequences (vLLM then runs them
    in waves: slower, not a failure); '' otherwise."""
    if not gpu_engine(cfg):
        return ""
    at_once = int(engine.kv_cache // (tokens * kv_per_token(shape, WEIGHT_BYTES[cfg.model.dtype])))
    return f", KV room for {at_once} at once" if at_once < sequences else ""


def engine_problem(cfg: Config, shape: ModelShape, engine: Memory, tokens: int) -> str | None:
    """Why a CUDA engine cannot start: its share of the card does not hold the weights and one sequence's KV cache
    (vLLM stops at start-up: no room for cache blocks)."""
    if not gpu_engine(cfg):
        return None
    need = engine.parameters + tokens * kv_per_token(shape, WEIGHT_BYTES[cfg.model.dtype])
    reserved = engine_reservation(cfg)
    if need <= reserved:
        return None
    util = cfg.ppo.rollout.gpu_memory_utilization
    return (f"stage ppo, role rollout: vLLM takes ppo.rollout.gpu_memory_utilization={util:g} of the "
            f"{cfg.profile.gpu} ({gib(reserved)}), which does not hold the weights ({gib(engine.parameters)}) and one "
            f"sequence's KV cache: raise it (the roles sharing its GPU get the rest)")


STAGE_ROLES: dict[str, Callable[[Config, ModelShape], list[RolePlan]]] = {
    "sft": _sft_roles, "reward_model": _reward_model_roles, "dpo": _dpo_roles, "ppo": _ppo_roles}


# ---- when to skip RLHF (SPEC §4) -------------------------------------------------------------------------
@dataclass(frozen=True)
class Recommendation:
    method: str  # "sft_only", "ppo" or "dpo"
    reason: str


def recipe_alignment(stages: list[str]) -> str | None:
    return next((stage for stage in ("ppo", "dpo") if stage in stages), None)


def recommend_alignment(task_type: str, stages: list[str]) -> Recommendation:
    """SFT only for formatted-output tasks; for open-ended ones the RLHF method the recipe affords, if any."""
    affordable = recipe_alignment(stages)
    if task_type in FORMATTED_OUTPUT_TASKS:
        return Recommendation("sft_only", f"{task_type} is a formatted-output task: a right answer has a fixed form "
                                          f"that SFT on curated examples teaches directly, so RLHF adds cost and "
                                          f"reward-hacking risk for little gain (SPEC §4)")
    if affordable is None:
        return Recommendation("sft_only", f"{task_type} would benefit from RLHF, but this profile has no room for "
                                          f"it (SPEC §6: validation runs only); a 2xa100 or larger profile adds DPO")
    how = ("DPO: offline on preference pairs, no reward, value or rollout models to host" if affordable == "dpo"
           else "PPO: online, with the reward model, value model, reference and vLLM rollouts")
    return Recommendation(affordable, f"{task_type} is open-ended: there is no single right answer, so learning "
                                      f"what people prefer pays off (SPEC §4); this profile runs {how}")


def stages_for_task(cfg: Config, task: str) -> tuple[list[str], str | None]:
    """(the stages jobs.pipeline runs for `task`, the line that says why they differ from pipeline.stages, or None):
    the one rule the pipeline and the plan share. SPEC §4: a formatted-output task (code, extraction) needs SFT
    only, so its RLHF stages are skipped unless pipeline.force_rlhf asks for them; other tasks run the stages
    listed, a reward model without PPO or DPO included."""
    stages = list(cfg.pipeline.stages)
    rlhf = [stage for stage in stages if stage in RLHF_STAGES]
    if task not in FORMATTED_OUTPUT_TASKS or not rlhf:
        return stages, None
    if cfg.pipeline.force_rlhf:
        return stages, (f"pipeline.force_rlhf=true: running {', '.join(rlhf)} for a {task} task, which SPEC §4 "
                        f"would train with SFT only")
    why = recommend_alignment(task, stages).reason
    return [stage for stage in stages if stage not in RLHF_STAGES], (f"skipping {', '.join(rlhf)}: {why} "
                                                                     f"(pipeline.force_rlhf=true runs them)")


# ---- the plan --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    cfg: Config
    shape: ModelShape
    task_type: str
    recommendation: Recommendation
    stages: list[str]
    roles: list[RolePlan]
    problems: list[str] = field(default_factory=list)
    costs: list[StageCost] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems


REMEDIES = {
    "parameters_4bit": "the 4-bit base alone is too large: split it with deepspeed.stage=3 over more GPUs, or take a "
                       "smaller model",
    "activations": "set model.gradient_checkpointing=true or lower the micro-batch size or max length",
    "kv_cache": "add rollout engines or lower ppo.rollout_batch_size",
    "offloaded": "offloaded parameters and optimizer states live in host memory: more host memory or nodes, or "
                 "offload less",
}


def device_budget(cfg: Config, gpus_per_rank: float) -> float:
    return gpus_per_rank * cfg.profile.gpu_memory_gib * GIB * cfg.profile.usable_memory_share


def host_budget(cfg: Config) -> float:
    return cfg.profile.host_memory_gib * cfg.profile.nodes * GIB * cfg.profile.usable_memory_share


def remedy(cfg: Config, term: str, stage: str = "sft", role: str = "policy") -> str:
    """What would bring `term` down for this role, leaving out what is already in effect: the reward-model stage's
    LoRA is reward_model.lora; a PPO value model trains in full whatever the LoRA settings; ZeRO-3 cannot be raised."""
    if role == "rollout" and gpu_engine(cfg):  # vLLM takes its share of the card whatever the batch
        return ("lower ppo.rollout.gpu_memory_utilization to the engine's share of its GPU, or give it more of one "
                "(ppo.gpus_per_actor)")
    if term in REMEDIES and term != "parameters_4bit":
        return REMEDIES[term]
    ds, full = cfg.deepspeed, role == "value"
    if term == "parameters" and cfg.model.quantization == "4bit" and ds.stage < 3 and not full:
        return REMEDIES["parameters_4bit"]
    lora_key = "reward_model.lora" if stage == "reward_model" else "lora.enabled"
    lora_on = cfg.reward_model.lora if stage == "reward_model" else cfg.lora.enabled
    options = []
    if term == "parameters":
        if not full and cfg.model.quantization == "none":
            options.append(f"quantise the base (model.quantization=int8/4bit with {lora_key}=true)")
        if ds.stage < 3:
            options.append("use deepspeed.stage=3")
        if not ds.offload_param:
            options.append("set deepspeed.offload_param")
    else:  # gradients, optimizer
        if not full and not lora_on:
            options.append(f"train LoRA adapters ({lora_key}=true)")
        if ds.stage < (2 if term == "gradients" else 3):
            options.append("raise deepspeed.stage")
        if term == "optimizer" and not ds.offload_optimizer:
            options.append("set deepspeed.offload_optimizer")
        if full:
            options.append("the value model trains every parameter: split it over more ranks (ppo.value_workers) "
                           "or use an estimator without one (ppo.advantage_estimator=grpo)")
    return ", or ".join(options) or "take a smaller model or a profile with more memory"


def gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def gpu_problems(cfg: Config, stage: str, roles: list[RolePlan]) -> list[str]:
    prof, problems = cfg.profile, []
    total_gpus = prof.gpus_per_node * prof.nodes
    wanted = sum(r.ranks * r.gpus_per_rank for r in roles)
    if wanted > total_gpus:
        problems.append(f"stage {stage} asks for {wanted:g} GPUs but profile {prof.name} has {total_gpus}")
    problems += [r.problem for r in roles if r.problem]
    for r in (r for r in roles if r.memory is not None and r.gpus_per_rank > 0):
        budget = device_budget(cfg, r.gpus_per_rank)
        if r.memory.on_device > budget:
            term = r.memory.largest_term()
            problems.append(f"stage {stage}, role {r.role}: needs {gib(r.memory.on_device)} per rank "
                            f"({term} {gib(getattr(r.memory, term))}) but {r.gpus_per_rank:g} × {prof.gpu} offers "
                            f"{gib(budget)} ({prof.usable_memory_share:.0%} usable); "
                            f"{remedy(cfg, term, stage, r.role)}")
    return problems


def placement_problems(cfg: Config, stage: str, roles: list[RolePlan]) -> list[str]:
    """Whether the PPO roles' placement groups (ppo.placement: strategies, colocation) can be laid out on the
    profile's nodes at all, by the check a run makes against a live cluster (cluster/placement.plan_problem): a
    GPU count alone let 12 policy ranks in one STRICT_PACK group 'fit' on nodes of 8. Node resources (rollout_node,
    train_node) are left out: which nodes declare them is the cluster's, not the profile's."""
    from dataclasses import replace

    from cluster.placement import RoleResources, plan_groups, plan_problem

    on_gpus = [RoleResources(r.role, r.ranks, 0.0, r.gpus_per_rank) for r in roles
               if stage == "ppo" and r.memory is not None and r.ranks and r.gpus_per_rank > 0]
    if not on_gpus:
        return []
    ppo, prof = cfg.ppo, cfg.profile
    plans = [replace(plan, roles=tuple(replace(res, node_resource=None) for res in plan.roles))
             for plan in plan_groups(on_gpus, ppo.placement, ppo.placement_strategy, ppo.colocate)]
    problem = plan_problem(plans, [{"GPU": float(prof.gpus_per_node)} for _ in range(prof.nodes)])
    return [f"stage {stage}: {problem} (profile {prof.name}: {prof.nodes} × {prof.gpus_per_node} GPUs; "
            f"ppo.placement)"] if problem else []


def host_problems(cfg: Config, stage: str, roles: list[RolePlan]) -> list[str]:
    """Every CPU-resident rank and everything offloaded share the hosts' memory."""
    on_host = [r for r in roles if r.memory is not None and r.gpus_per_rank == 0]
    need = sum(r.ranks * r.memory.on_device for r in on_host)
    need += sum(r.ranks * r.memory.offloaded for r in roles if r.memory is not None)
    if need <= host_budget(cfg):
        return []
    terms = {term: sum(r.ranks * getattr(r.memory, term) for r in on_host) for term in Memory.TERMS}
    terms["offloaded"] = sum(r.ranks * r.memory.offloaded for r in roles if r.memory is not None)
    term = max(terms, key=terms.get)
    return [f"stage {stage}: needs {gib(need)} of host memory over all ranks ({term} {gib(terms[term])}) but "
            f"{cfg.profile.nodes} × {cfg.profile.host_memory_gib:g} GiB offers {gib(host_budget(cfg))}; "
            f"{remedy(cfg, term, stage, on_host[0].role if on_host else 'policy')}"]


def quantization_problems(cfg: Config) -> list[str]:
    if cfg.model.quantization != "none" and not cfg.lora.enabled:
        return [f"model.quantization={cfg.model.quantization} weights cannot be trained directly; "
                f"set lora.enabled=true"]
    if cfg.model.quantization != "none" and cfg.profile.gpu is None:
        return [f"model.quantization={cfg.model.quantization} needs CUDA GPUs; profile {cfg.profile.name} has none"]
    return []


def make_plan(cfg: Config, size: str | None = None, task_type: str | None = None) -> Plan:
    """The stages to run for the task, each role's placement and memory, and every reason it cannot fit."""
    shape = model_shape(cfg, size)
    task = task_type or cfg.pipeline.task_type or cfg.profile.task_type
    recommendation = recommend_alignment(task, cfg.pipeline.stages)
    stages, _ = stages_for_task(cfg, task)  # what jobs.pipeline would run
    roles, problems, costs = [], quantization_problems(cfg), []
    device, tokens = device_for(cfg), plan_tokens(cfg, stages)
    for stage in (s for s in stages if s in STAGE_ROLES):
        stage_roles = STAGE_ROLES[stage](cfg, shape)
        roles.extend(stage_roles)
        problems += gpu_problems(cfg, stage, stage_roles) + host_problems(cfg, stage, stage_roles)
        if not any(p.startswith(f"stage {stage} asks for") for p in problems):  # too few GPUs says it already
            problems += placement_problems(cfg, stage, stage_roles)
        gpus = sum(r.ranks * r.gpus_per_rank for r in stage_roles)
        costs.append(stage_cost(cfg, stage, gpus, shape.params, tokens, device))
    return Plan(cfg, shape, task, recommendation, stages, roles, problems, costs)


def load_profile(name: str, overrides: list[str] | None = None) -> Config:
    if name not in PROFILE_RECIPES:
        raise ConfigError(f"unknown profile {name!r}; known: {', '.join(PROFILE_RECIPES)}")
    return load_config(REPO_ROOT / PROFILE_RECIPES[name], overrides)


# ---- printing --------------------------------------------------------------------------------------------
def settings_line(cfg: Config, shape: ModelShape) -> str:
    weights = cfg.model.quantization if cfg.model.quantization != "none" else cfg.model.dtype
    if cfg.lora.enabled:
        targets = lora_targets(cfg.lora.target_modules, DEFAULT_FAMILY)  # the planner sizes Llama shapes
        trained = lora_trainable(shape, cfg.lora.rank, targets)
        method = (f"{'QLoRA' if cfg.model.quantization == '4bit' else 'LoRA'} r={cfg.lora.rank} on "
                  f"{','.join(targets)} ({trained / 1e6:.1f}M trained, {trained / shape.params:.2%})")
    else:
        method = "full fine-tuning"
    ds = cfg.deepspeed
    offload = [name for name, on in (("optimizer", ds.offload_optimizer), ("parameters", ds.offload_param)) if on]
    checkpointing = "on" if cfg.model.gradient_checkpointing else "off"
    return (f"weights {weights}, training {ds.precision}, {method}, ZeRO-{ds.stage}, offload "
            f"{' + '.join(offload) or 'none'}, gradient checkpointing {checkpointing}")


def role_row(r: RolePlan, cfg: Config) -> str:
    head = f"{r.stage:<13}{r.role:<10}"
    if r.memory is None:
        return f"{head}{'-':>5}  {r.note}"
    m = r.memory
    where = f"{r.gpus_per_rank:g} GPU" if r.gpus_per_rank else "CPU"
    budget = gib(device_budget(cfg, r.gpus_per_rank)) if r.gpus_per_rank else "host"
    cells = "".join(f"{getattr(m, term) / GIB:>9.2f}" for term in Memory.TERMS)
    offloaded = f"; {gib(m.offloaded)} offloaded to host" if m.offloaded else ""
    return f"{head}{r.ranks:>5}  {where:<7}{cells}{m.on_device / GIB:>9.2f}{budget:>11}  {r.note}{offloaded}"


def format_plan(plan: Plan) -> str:
    cfg, prof = plan.cfg, plan.cfg.profile
    nodes = f"{prof.nodes} node{'s' if prof.nodes > 1 else ''}"
    hardware = f"{nodes} × {prof.gpus_per_node} {prof.gpu}" if prof.gpu else f"{nodes}, CPU only"
    lines = [f"profile   {prof.name}: {hardware}, host {prof.host_memory_gib:g} GiB per node"
             + (f"; {prof.expected_quality}" if prof.expected_quality else ""),
             f"model     {plan.shape.describe()}",
             f"task      {plan.task_type} → {plan.recommendation.method}: {plan.recommendation.reason}",
             f"stages    {' → '.join(plan.stages)}",
             f"settings  {settings_line(cfg, plan.shape)}",
             "",
             f"{'stage':<13}{'role':<10}{'ranks':>5}  {'device':<7}" + "".join(f"{t:>9}" for t in
                                                                          ("params", "grads", "optim", "activ", "KV"))
             + f"{'total':>9}{'budget':>11}  (GiB per rank)"]
    lines += [role_row(r, cfg) for r in plan.roles]
    lines += ["", "formulas: params N·w (+T·p trained), ZeRO-3 /D; grads T·p, ZeRO-2+ /D; AdamW T·12 (fp32: 8), "
                  "ZeRO-1+ /D; activations b·s·h·L·34 (checkpointing b·s·h·(2L+34)) + b·s·V·4 logits (PPO: "
                  "b·n·V·4, n new tokens); KV b·s·2·L·kv·hd·w (python -m jobs.plan --help)"]
    lines += ["", *format_costs(plan)]
    lines.append("verdict   " + ("fits" if plan.fits else "does not fit: " + plan.problems[0]))
    return "\n".join(lines)


def format_costs(plan: Plan) -> list[str]:
    """The time and money table (jobs/planning/costs.py): per stage and in total."""
    cfg, device = plan.cfg, device_for(plan.cfg)
    lines = [f"{'stage':<13}{'tokens':>10}{'PFLOP':>12}{'GPUs':>6}{'wall h':>10}{'GPU-h':>10}{'cost $':>11}"]
    for c in plan.costs:
        lines.append(f"{c.stage:<13}{c.tokens:>10.3g}{c.flops / 1e15:>12.4g}{c.gpus:>6g}{c.wall_hours:>10.3g}"
                     f"{c.gpu_hours:>10.3g}{c.cost:>11,.0f}")
    total = [sum(getattr(c, key) for c in plan.costs) for key in ("flops", "wall_hours", "gpu_hours", "cost")]
    lines.append(f"{'total':<13}{'':>10}{total[0] / 1e15:>12.4g}{'':>6}{total[1]:>10.3g}{total[2]:>10.3g}"
                 f"{total[3]:>11,.0f}")
    if device is None:
        rate = (f"hosts' cores at {CPU_PEAK_TFLOPS_PER_CORE * 1e3:g} GFLOP/s each, MFU {cfg.profile.mfu or CPU_MFU:g} "
                f"(no GPU price)")
    else:
        rate = (f"{cfg.profile.gpu} {device.peak_tflops:g} TFLOP/s at MFU {device.mfu:g} (generation "
                f"{device.decode_mfu:g}), ${device.price_per_hour:g} per GPU-hour ({device.source})")
    lines.append(f"costed    {rate}; 6N FLOPs per trained token (LoRA 4N, +2N with gradient checkpointing), "
                 f"2N per forward or generated token; data at 4 characters per token (python -m jobs.plan --help)")
    small = small_counted_data(plan)
    if small:
        lines.append(f"data      {small}")
    return lines


SMALL_DATA_TOKENS = 1e7  # below this, a GPU profile's costs are a demo file's, not a training run's


def small_counted_data(plan: Plan) -> str | None:
    """A warning when a GPU profile costs data counted from the recipe's files and it is small (the shipped profiles
    point at the demo data: 4xa100 then costs SFT at $0), or None."""
    prof = plan.cfg.profile
    if prof.gpu is None:
        return None
    given = {"sft": prof.sft_tokens, "reward_model": prof.preference_tokens, "dpo": prof.preference_tokens}
    counted = [f"{c.stage} {c.tokens:.3g}" for c in plan.costs
               if c.stage in given and given[c.stage] is None and c.tokens < SMALL_DATA_TOKENS]
    if not counted:
        return None
    return (f"tokens counted from the recipe's data files ({', '.join(counted)}) are a demo's, not a training run's: "
            f"set profile.sft_tokens / profile.preference_tokens to your data's size (a week of full 7B SFT on 4 "
            f"A100s is ~7.2B tokens)")
