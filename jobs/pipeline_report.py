"""The end-of-pipeline report: each stage's time and headline figures, links to its plots, and answers to
fixed prompts from the base model and from the final model, side by side (report.md + report.json)."""

from __future__ import annotations

import json
from pathlib import Path

from common.config import Config, resolve_path
from common.durable import write_atomically

HEADLINES = {
    "synth_report": ("requested", "generated", "failed"),
    "curate_report": ("input", "curated", "dropped_by_rules", "review_queue", "dropped_by_diversity"),
    "sft_metrics": ("step", "loss", "eval_loss"),
    "reward_model_report": ("accuracy_before_training", "eval_accuracy", "eval_accuracy_ci95", "eval_margin"),
    "ppo_metrics": ("reward/rm_mean", "reward/total", "kl", "kl_k3", "policy/entropy", "response_tokens_mean"),
    "dpo_metrics": ("loss", "eval_reward_accuracy"),
}


def answer_prompts(model_path: str, prompts: list[str], max_new_tokens: int, chat_template: str | None) -> list[str]:
    """Greedy answers from a local model (run as a Ray task so the driver never loads weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    from actors.chat import encode_prompt
    from actors.modeling import load_tokenizer

    tokenizer = load_tokenizer(model_path, chat_template)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    answers = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, [{"role": "user", "content": prompt}])])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def samples(cfg: Config, outputs: dict) -> dict:
    import ray

    final = outputs.get("policy") or outputs.get("sft_model")
    if not final:
        return {}
    task = ray.remote(num_cpus=1)(answer_prompts)
    prompts, n = cfg.pipeline.sample_prompts, cfg.pipeline.sample_max_new_tokens
    before, after = ray.get([task.remote(str(resolve_path(cfg.model.path)), prompts, n, cfg.model.chat_template),
                             task.remote(final, prompts, n, cfg.model.chat_template)])
    return {"prompts": prompts, "base": before, "final": after, "final_model": final}


def headline(outputs: dict) -> dict:
    rows = {}
    for key, fields in HEADLINES.items():
        if key in outputs:
            rows[key] = {f: outputs[key].get(f) for f in fields if outputs[key].get(f) is not None}
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(cfg: Config, run_dir: Path, outputs: dict, seconds: dict) -> Path:
    figures = headline(outputs)
    answers = samples(cfg, outputs)
    plots = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("*/*.png"))
    lines = [f"# rayalign pipeline report: {cfg.run.name}", "", "| stage | seconds | figures |", "|---|---|---|"]
    for stage, secs in seconds.items():
        key = {"synthesize": "synth_report", "curate": "curate_report", "sft": "sft_metrics", "reward_model": "reward_model_report",
               "ppo": "ppo_metrics", "dpo": "dpo_metrics"}[stage]
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in figures.get(key, {}).items())
        lines.append(f"| {stage} | {secs:.0f} | {shown} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if answers:
        lines += ["", f"## Answers before and after (greedy, {cfg.pipeline.sample_max_new_tokens} tokens)", "",
                  "| prompt | base model | final model |", "|---|---|---|"]
        lines += [f"| {_cell(p)} | {_cell(b)} | {_cell(a)} |" for p, b, a in
                  zip(answers["prompts"], answers["base"], answers["final"])]
    report = {"run": cfg.run.name, "seconds": seconds, "figures": figures, "samples": answers, "plots": plots,
              "outputs": {k: v for k, v in outputs.items() if isinstance(v, str)}}
    for name, text in (("report.md", "\n".join(lines) + "\n"), ("report.json", json.dumps(report, indent=2))):
        write_atomically(run_dir / name, text)
    return run_dir / "report.md"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)
