"""PPO speed on this machine, each figure next to a baseline measured in the same run. Not a test.

    .venv/bin/python bench/ppo_step.py [--steps 6] [--batch 64] [--new-tokens 64] [--sync-sizes 0.4,8,32]
                                       [--sync-engines vllm,hf] [--sync-transports object_store,collective]
                                       [--cpu-weights auto|packed,plain] [--zero-copy on|on,off]
                                       [--packed-sync rebuild|rebuild,reload] [--out ppo_step.json]
                                       [--sections rollout,step,sync]

1. rollout: tokens/s of the vLLM engine actor vs Hugging Face `generate` (same model, batch, sampling
   settings, max new tokens; both in a Ray actor with one CPU) → ratio.
2. step: per-phase seconds of a short PPO run on the tiny CPU config (keyword reward), steps after the
   first averaged (the first includes engine warm-up).
3. sync: weight gather + push into a running rollout engine (vLLM, and the Hugging Face engine for the
   transport's own cost) vs parameter count (random Llama models built in code, no download), as seconds,
   effective GB/s (model bytes / seconds) and share of the one-thread memory-copy bandwidth measured in the
   same run; through Ray's object store and over the collective path (ppo.weight_sync=collective: a gloo
   broadcast group here); into vLLM with each layout of its weights that --cpu-weights lists
   (ppo.rollout.cpu_weights: packed for oneDNN, or plain and loaded in place; auto: the default's choice per size),
   plain engines with their parameters made the synced buckets in the store or copied into (--zero-copy on,off:
   ppo.rollout.zero_copy_sync), packed engines rebuilding their oneDNN weights from the synced ones or through
   vLLM's reload (--packed-sync rebuild,reload: ppo.rollout.packed_sync).
Writes bench/results/ppo_step.json (--out: another name there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def hf_generate(model_path: str, prompts: list[list[int]], new_tokens: int, temperature: float, top_p: float,
                repetition_penalty: float, pad_id: int) -> tuple[int, float]:
    """(generated tokens, seconds) for Hugging Face generate on the same left-padded batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                  temperature=temperature, top_p=top_p, repetition_penalty=repetition_penalty, pad_token_id=pad_id)
    with torch.no_grad():
        model.generate(ids[:2], **{**kwargs, "attention_mask": mask[:2], "max_new_tokens": 4, "min_new_tokens": 4})
        started = time.perf_counter()
        out = model.generate(ids, **kwargs)
    return int((out.shape[1] - width) * len(prompts)), time.perf_counter() - started


def bench_rollout(cfg, batch: int, new_tokens: int) -> dict:
    import ray

    from actors.chat import encode_prompt
    from actors.modeling import load_tokenizer
    from actors.ppo_prompts import load_prompts
    from actors.rollout.vllm_engine import RolloutEngine
    from common.config import resolve_path

    path = str(resolve_path(cfg.model.path))
    tokenizer = load_tokenizer(path)
    prompts = [encode_prompt(tokenizer, p.turns, 96) for p in load_prompts(cfg.ppo)[:batch]]
    rollout = cfg.ppo.rollout
    engine = ray.remote(num_cpus=1)(RolloutEngine).remote(path, rollout, 0, 256)
    ray.get(engine.generate.remote(prompts[:2], None, 4))  # warm-up
    # Sampling stops at EOS in vLLM; count the tokens it really produced.
    started = time.perf_counter()
    samples = ray.get(engine.generate.remote(prompts, None, new_tokens))
    vllm_s = time.perf_counter() - started
    vllm_tokens = sum(len(s.response_ids) for s in samples)
    ray.kill(engine)
    hf_tokens, hf_s = ray.get(ray.remote(num_cpus=1)(hf_generate).remote(
        path, prompts, new_tokens, rollout.temperature, rollout.top_p, rollout.repetition_penalty,
        tokenizer.pad_token_id))
    out = {"batch": batch, "new_tokens": new_tokens, "vllm_tokens_per_s": vllm_tokens / vllm_s,
           "hf_tokens_per_s": hf_tokens / hf_s}
    out["ratio"] = out["vllm_tokens_per_s"] / out["hf_tokens_per_s"]
    return out


def bench_step(cfg, steps: int, output_root: str) -> dict:
    from dataclasses import replace

    from common.metrics import read_jsonl
    from jobs.ppo import run

    ppo = replace(cfg.ppo, steps=steps, save_every=10_000, export=False,
                  reward=replace(cfg.ppo.reward, rm_source="keyword"))
    result = run(replace(cfg, ppo=ppo, run=replace(cfg.run, output_root=output_root, name="bench")))
    rows = read_jsonl(result.output_dir / "metrics.jsonl")[1:]
    phases = [k for k in rows[0] if k.startswith("time/")]
    return {"steps_averaged": len(rows), **{k: statistics.fmean(r[k] for r in rows) for k in phases},
            "rollout_tokens_per_s": statistics.fmean(r["rollout_tokens_per_s"] for r in rows)}


def random_llama(folder: Path, hidden: int, layers: int, tokenizer_from: str) -> int:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                         num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, head_dim=32,
                         max_position_embeddings=512, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def copy_bandwidth(nbytes: int = 110_000_000, reps: int = 7) -> float:
    """GB/s of one thread copying an `nbytes` tensor into warm (already written) memory: the copy limit a weight
    sync is compared with. Fresh memory would be slower (page faults), so this is the harder baseline."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    source, target = torch.randn(nbytes // 4), torch.empty(nbytes // 4)
    times = []
    for _ in range(reps + 2):
        started = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - started)
    torch.set_num_threads(threads)
    return nbytes / statistics.median(times[2:]) / 1e9


def bench_sync(cfg, sizes_m: list[float], engines: list[str], copy_gb_s: float, reps: int = 5, warmup: int = 3,
               pause_s: float = 0.5, transports: tuple[str, ...] = ("object_store", "collective"),
               node_resources: dict[str, str] | None = None, layouts: tuple[str, ...] = ("auto",),
               zero_copies: tuple[bool, ...] = (True,), packed_syncs: tuple[str, ...] = ("rebuild",)) -> list[dict]:
    """Gather + push time vs parameters, policy (1 rank, ZeRO stage from config) → one rollout engine: the run's
    own sync (actors/ppo_weight_sync.WeightSync over each of `transports`), medians of `reps` after `warmup` syncs,
    cold and warm (timed_syncs). Through the object store the policy gathers, packs and puts its buckets while the
    engine, called at the same time, waits for them and loads them. The first syncs write into object-store memory
    the policy has never touched and pay a page fault per 4 KiB (measured at 27.5M: 10-27k faults, 0.12-0.34 s per
    put; from the fourth on ~100 faults, 12 ms). Syncs are `pause_s` apart, as a PPO step separates them: back to back,
    the store has not yet freed the last sync's buckets and the new ones land in untouched memory again.

    engine "vllm" loads as `layouts` say (ppo.rollout.cpu_weights, one engine each): packed rebuilds every linear
    weight's oneDNN handler, from the synced weights themselves or through vLLM's reload_weights (`packed_syncs`,
    ppo.rollout.packed_sync: rebuild, reload; actors/rollout/packed_rebuild.py); plain copies each weight into the
    layer that kept it (actors/rollout/vllm_weights.py), or, with zero copy (`zero_copies`,
    ppo.rollout.zero_copy_sync), points each parameter at its bytes in the synced buckets where they lie as vLLM
    stacks them and copies the rest; "hf" (the Hugging Face engine) copies each weight into its parameter, so its
    figure is the transport's own cost plus one copy. `node_resources` ({"policy": ..., "rollout": ...}) puts each
    role on the node that declares that custom resource (bench/sync_across_nodes.py).

    transport "collective" times the sync over a gloo group (the policy stages each bucket and broadcasts it, the
    engine receives and loads). The group forms before the timed syncs, as a run forms it once its roles are up."""
    from dataclasses import replace

    from actors.group import RoleGroup
    from actors.policy import PolicyRole
    from actors.ppo_roles import role_args
    from actors.ppo_weight_sync import WeightSync
    from actors.rollout.hf_engine import HFRolloutEngine
    from actors.rollout.vllm_engine import RolloutEngine
    from cluster.placement import RoleResources, release, reserve
    from common.config import resolve_path

    engine_classes = {"vllm": RolloutEngine, "hf": HFRolloutEngine}
    rows = []
    shapes = {0.4: None, 8: (256, 8), 32: (512, 8), 100: (768, 14)}
    for size in sizes_m:
        with tempfile.TemporaryDirectory() as tmp:
            if shapes.get(size) is None:
                path, params = str(resolve_path(cfg.model.path)), 444_352
            else:
                hidden, layers = shapes[size]
                path = tmp
                params = random_llama(Path(tmp), hidden, layers, str(resolve_path(cfg.model.path)))
            run_cfg = replace(cfg, model=replace(cfg.model, path=path))
            nbytes = params * torch.empty(0, dtype=getattr(torch, cfg.model.dtype)).element_size()
            nodes = node_resources or {}
            group, index = reserve([RoleResources("policy", 1, 1.0, node_resource=nodes.get("policy")),
                                    RoleResources("rollout", 1, 1.0, node_resource=nodes.get("rollout"))])
            policy = RoleGroup("policy", PolicyRole, 1, group, index["policy"], 1.0, 0,
                               role_args(run_cfg, path)["policy"], True)
            policy.call("setup")
            targets = [(name, layout, zero_copy, packed_sync) for name in engines
                       for layout in (layouts if name == "vllm" else ("",))
                       for zero_copy in (zero_copies if layout in ("plain", "auto") else zero_copies[:1])
                       for packed_sync in (packed_syncs if layout in ("packed", "auto") else packed_syncs[:1])]
            for name, layout, zero_copy, packed_sync in targets:
                rollout = (replace(cfg.ppo.rollout, cpu_weights=layout, zero_copy_sync=zero_copy,
                                   packed_sync=packed_sync) if layout else cfg.ppo.rollout)
                # The run's own engine arguments, its thread plan included: a packed engine's sync reorders the
                # weights on the threads the plan gives its loads (the node's cores for one engine).
                engine_args = role_args(replace(run_cfg, ppo=replace(run_cfg.ppo, rollout=rollout)), path)["rollout"]
                engine = RoleGroup("rollout", engine_classes[name], 1, group, index["rollout"], 1.0, 0, engine_args)
                engine.call_rank0("ping")  # the engine has started: its start-up is not sync time
                for transport in transports:
                    # The run's own sync (actors/ppo_weight_sync.py), over this transport.
                    sync = WeightSync(SimpleNamespace(policy=policy, rollout=engine),
                                      replace(cfg.ppo, weight_sync=transport))
                    sync.prepare()  # the collective path's group forms before the timed syncs, as in a run
                    seconds, warm_seconds = (timed_syncs(policy, engine, sync, warmup, reps, pause_s, warm)
                                             for warm in (False, True))
                    viewing = layout and engine.call_rank0("zero_copy")  # (parameters that are the store's bytes, all)
                    # What auto chose (plain or packed), and how a packed engine's syncs went: packed once its first
                    # sync proved the rebuild, packed-reload through vLLM's reload.
                    weights = layout and engine.call_rank0("weight_layout")
                    shape = {"layout": layout, "weights": weights, "zero_copy": list(viewing),
                             "packed_sync": packed_sync} if layout else {}
                    rows.append({"engine": name, "transport": transport, "params": params, "bytes": nbytes, **shape,
                                 "seconds": seconds, "gb_per_s": nbytes / seconds / 1e9,
                                 "copy_share": nbytes / seconds / 1e9 / copy_gb_s, "warm_seconds": warm_seconds,
                                 "warm_copy_share": nbytes / warm_seconds / 1e9 / copy_gb_s})
                engine.kill()
            policy.kill()
            release(group)
    return rows


def timed_syncs(policy, engine, sync, warmup: int, reps: int, pause_s: float, warm: bool) -> float:
    """Median seconds of `reps` calls of `sync` after `warmup`, each `pause_s` after the last. `warm`: both roles
    answer a call just before each sync, as the policy has just trained when a step syncs. On this machine a role
    that sat idle answers its next call late, the longer the idle the later: a no-op actor call took 1.5 ms after
    2 ms idle, 6 ms after 0.1 s and 13-45 ms after 0.5 s, depending on the machine's mode (a pipe round trip
    between two processes: 0.3 ms after 0.3 s). Cold syncs (the default) carry that; warm ones show the
    transport's own cost."""
    times = []
    for _ in range(warmup + reps):
        time.sleep(pause_s)
        if warm:
            policy.call_rank0("placement_info")
            engine.call_rank0("placement_info")
        started = time.perf_counter()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times[warmup:])


def main() -> None:
    from cluster import runtime
    from common.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--sync-sizes", default="0.4,8,32", help="parameter counts in millions (0.4, 8, 32, 100)")
    parser.add_argument("--sync-engines", default="vllm,hf", help="rollout engines the sync loads into")
    parser.add_argument("--sync-transports", default="object_store,collective",
                        help="how the sync moves the weights (ppo.weight_sync): Ray's object store, a gloo group")
    parser.add_argument("--cpu-weights", default="auto",
                        help="layouts of the vLLM engine's weights to sync into (ppo.rollout.cpu_weights), e.g. "
                             "packed,plain")
    parser.add_argument("--zero-copy", default="on",
                        help="plain vLLM engines whose parameters are the synced buckets in the store (on) or copied "
                             "into (off): ppo.rollout.zero_copy_sync; e.g. on,off")
    parser.add_argument("--packed-sync", default="rebuild",
                        help="how packed vLLM engines take a sync (ppo.rollout.packed_sync): rebuild their oneDNN "
                             "weights from the synced ones, or vLLM's reload; e.g. rebuild,reload")
    parser.add_argument("--out", default="ppo_step.json", help="the results file, in bench/results/")
    parser.add_argument("--sections", default="rollout,step,sync",
                        help="which sections to run; the others keep their last results in the JSON")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    cfg = load_config(REPO / "configs" / "tiny-cpu.yaml")
    runtime.start(cfg.ray)
    out = RESULTS / args.out
    results = json.loads(out.read_text()) if out.exists() and sections != {"rollout", "step", "sync"} else {}
    results["machine"] = f"{torch.get_num_threads()} torch threads, CPU"
    if "rollout" in sections:
        results["rollout"] = bench_rollout(cfg, args.batch, args.new_tokens)
        print(f"rollout  vLLM {results['rollout']['vllm_tokens_per_s']:,.0f} tok/s  vs  HF generate "
              f"{results['rollout']['hf_tokens_per_s']:,.0f} tok/s  → ×{results['rollout']['ratio']:.1f}")
    if "step" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            results["step"] = bench_step(cfg, args.steps, tmp)
        print("PPO step phases (s, mean of steps 2..n):")
        for key, value in results["step"].items():
            if key.startswith("time/"):
                print(f"  {key[5:]:<11} {value:7.3f}")
    if "sync" in sections:
        results["copy_gb_per_s"] = copy_bandwidth()
        results["sync"] = bench_sync(cfg, [float(s) for s in args.sync_sizes.split(",")],
                                     args.sync_engines.split(","), results["copy_gb_per_s"],
                                     transports=tuple(args.sync_transports.split(",")),
                                     layouts=tuple(args.cpu_weights.split(",")),
                                     zero_copies=tuple(value == "on" for value in args.zero_copy.split(",")),
                                     packed_syncs=tuple(args.packed_sync.split(",")))
        print(f"weight sync (policy: gather + pack + put; engine: load), cold and warm, vs one-thread copy "
              f"{results['copy_gb_per_s']:.1f} GB/s:")
        for row in results["sync"]:
            viewed, parameters = row.get("zero_copy") or (0, 0)
            weights = f"{row['weights']}, {viewed}/{parameters} viewed" if viewed else row.get("weights")
            engine = row["engine"] + (f" ({weights})" if "layout" in row else "")
            print(f"  {engine:<33} {row['transport']:<12} {row['params'] / 1e6:7.2f} M params  "
                  f"{row['seconds']:7.3f} s  {row['gb_per_s']:6.2f} GB/s  {100 * row['copy_share']:5.1f}% "
                  f"of copy; warm {row['warm_seconds']:.3f} s  {100 * row['warm_copy_share']:5.1f}%")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
