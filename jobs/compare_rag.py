"""Fine-tuning against retrieval (the seed's closing question): the same questions answered by four arms on the same
rollout engine (vLLM, or the Hugging Face fallback ppo.rollout.engine names), greedily:

    base          the base model (rag.base_model, else model.path), the question alone
    sft           the fine-tuned model (rag.sft_model, else the pipeline's <run dir>/sft/model), the question alone
    base + rag    the base model, the top rag.top_k knowledge-base chunks in the prompt
    sft + rag     the fine-tuned model, the same chunks

    python -m jobs.compare_rag --config configs/tiny-cpu.yaml [rag.sft_model=outputs/.../sft/model] [key=value ...]

Retrieval embeds the knowledge base's chunks and the questions with the curation encoder (all-MiniLM-L6-v2) and
takes the most similar chunks; its recall@k of the gold document is reported on its own. Each arm is scored by exact
match, token F1 and whether the answer contains the reference (jobs/rag/metrics.py), and timed (seconds per answer,
batched). Written to <run.output_root>/<run.name>/compare_rag/: results.md, results.csv, answers.jsonl and
compare_rag.png. A knowledge base without documents, a question without a reference answer or a missing model folder
is one line before any model loads.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import Config, resolve_path
from common.errors import ConfigError
from common.model_dir import check_model_dir
from jobs import cli
from jobs.make_task import write_jsonl
from jobs.rag.kb import Question, chunk_documents, load_documents, load_questions
from jobs.rag.metrics import contains, exact, f1, recall_at_k

log = logging.getLogger("rayalign.compare_rag")
SECTIONS = ("run", "ray", "model", "ppo", "rag")
METRICS = {"exact match": exact, "token F1": f1, "contains answer": contains}


@dataclass(frozen=True)
class Arm:
    name: str
    model: str
    retrieval: bool


@dataclass(frozen=True)
class CompareResult:
    folder: Path
    rows: list[dict]  # one per arm: its metrics
    recall: float | None


def arms(cfg: Config) -> list[Arm]:
    """The four arms, each model folder checked (before any model loads)."""
    rag = cfg.rag
    base = rag.base_model or cfg.model.path
    sft = rag.sft_model or str(cfg.run.output_dir("sft") / "model")
    for key, path in (("rag.base_model (else model.path)", base), ("rag.sft_model", sft)):
        if not resolve_path(path).is_dir():
            hint = "" if rag.sft_model or key.startswith("rag.base") else \
                " (the pipeline's SFT model; run python -m jobs.sft first or set rag.sft_model)"
            raise ConfigError(f"{key}: no model folder at {resolve_path(path)}{hint}")
        check_model_dir(resolve_path(path))
    return [Arm("base", base, False), Arm("sft", sft, False), Arm("base + rag", base, True),
            Arm("sft + rag", sft, True)]


def prompts(cfg: Config, questions: list[Question], passages: list[list[str]] | None) -> list[list[dict]]:
    """Each question as a one-turn chat: the plain template, or the retrieval one with numbered passages."""
    rag = cfg.rag
    if passages is None:
        return [[{"role": "user", "content": rag.plain_template.replace("{question}", q.question)}] for q in questions]
    chats = []
    for question, found in zip(questions, passages):
        numbered = "\n".join(f"[{i}] {text}" for i, text in enumerate(found, 1))
        text = rag.retrieval_template.replace("{passages}", numbered).replace("{question}", question.question)
        chats.append([{"role": "user", "content": text}])
    return chats


def answer(cfg: Config, model: str, chats: dict[str, list[list[dict]]]) -> dict[str, tuple[list[str], float]]:
    """Greedy answers of one model to each named prompt set on one rollout engine actor, with the seconds per
    answer (the set answered as one batch)."""
    import ray

    from actors import modeling
    from actors.chat import encode_prompt
    from actors.rollout.engines import rollout_engine_class

    rag, path = cfg.rag, str(resolve_path(model))
    tokenizer = modeling.load_tokenizer(path, cfg.model.chat_template)
    engine_class = rollout_engine_class(cfg.ppo.rollout, path)
    engine = ray.remote(num_cpus=cfg.ppo.cpus_per_actor)(engine_class).remote(
        path, cfg.ppo.rollout, cfg.run.seed, rag.max_prompt_tokens + rag.max_new_tokens + 8, cfg.model.dtype)
    try:
        ray.get(engine.ping.remote())
        out = {}
        for name, batch in chats.items():
            ids = [encode_prompt(tokenizer, chat, rag.max_prompt_tokens) for chat in batch]
            ray.get(engine.greedy.remote(ids[:1], 1))  # warm-up: the engine's first call is not an answer's cost
            started = time.perf_counter()
            responses = ray.get(engine.greedy.remote(ids, rag.max_new_tokens))
            seconds = (time.perf_counter() - started) / len(ids)
            out[name] = ([tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses], seconds)
        return out
    finally:
        ray.kill(engine)


def score(name: str, answers: list[str], questions: list[Question], seconds: float) -> dict:
    row = {"arm": name}
    for metric, fn in METRICS.items():
        row[metric] = statistics.fmean(fn(a, q.answer) for a, q in zip(answers, questions))
    row["s per answer"] = seconds
    return row


def run(cfg: Config) -> CompareResult:
    from cluster import runtime
    from jobs.rag.retrieval import Retriever

    rag = cfg.rag
    docs = load_documents(rag.kb_files)
    questions = load_questions(rag.question_files, {doc.id for doc in docs})[:rag.max_questions]
    chosen = arms(cfg)
    chunks = chunk_documents(docs, rag.chunk_chars)
    log.info("knowledge base: %d documents in %d chunks; %d questions", len(docs), len(chunks), len(questions))
    retrieved = Retriever(chunks).top_k([q.question for q in questions], rag.top_k)
    recall = recall_at_k([[c.doc_id for c in found] for found in retrieved], [q.doc_id for q in questions])
    plain, with_passages = prompts(cfg, questions, None), prompts(cfg, questions, [[c.text for c in found]
                                                                                    for found in retrieved])
    runtime.start(cfg.ray)
    answers: dict[str, tuple[list[str], float]] = {}
    for model in dict.fromkeys(arm.model for arm in chosen):
        named = {arm.name: with_passages if arm.retrieval else plain for arm in chosen if arm.model == model}
        log.info("answering with %s: %s", model, ", ".join(named))
        answers.update(answer(cfg, model, named))
    rows = [score(arm.name, answers[arm.name][0], questions, answers[arm.name][1]) for arm in chosen]
    folder = cfg.run.output_dir("compare_rag")
    write_outputs(folder, rows, recall, rag.top_k, questions, answers, retrieved)
    return CompareResult(folder, rows, recall)


# ---- outputs ---------------------------------------------------------------------------------------------
def table(rows: list[dict], recall: float | None, k: int, n: int) -> str:
    from jobs.ppo_report import markdown_table

    lines = [f"# Fine-tuning against retrieval: {n} questions", ""]
    lines += markdown_table(list(rows[0]), [list(row.values()) for row in rows])
    if recall is not None:
        lines += ["", f"Retrieval recall@{k} of the gold document: {recall:.3f}"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jobs.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(METRICS)
    for i, metric in enumerate(METRICS):
        ax.bar([a + i * width for a in range(len(rows))], [row[metric] for row in rows], width, label=metric)
    ax.set_xticks([a + width for a in range(len(rows))], [row["arm"] for row in rows])
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("answers by arm")
    return save_figure(fig, path)


def write_outputs(folder: Path, rows: list[dict], recall: float | None, k: int, questions: list[Question],
                  answers: dict[str, tuple[list[str], float]], retrieved: list) -> None:
    from common.metrics import write_csv
    from jobs.ppo_report import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_csv(rows, folder / "results.csv")
    report = table(rows, recall, k, len(questions))
    write_atomic(folder / "results.md", report + "\n![arms](compare_rag.png)\n")
    plot(rows, folder / "compare_rag.png")
    write_jsonl([{"question": q.question, "reference": q.answer, "doc_id": q.doc_id,
                  "retrieved": [c.doc_id for c in found], **{name: got[0][i] for name, got in answers.items()}}
                 for i, (q, found) in enumerate(zip(questions, retrieved))], folder / "answers.jsonl")
    print(report)


def main(argv: list[str] | None = None) -> CompareResult:
    cfg, _ = cli.parse("python -m jobs.compare_rag", __doc__, SECTIONS, argv)
    return run(cfg)


if __name__ == "__main__":
    sys.exit(cli.run_main("jobs.compare_rag", main))
