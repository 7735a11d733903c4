"""Fine-tuning against retrieval (python -m jobs.compare_rag): the knowledge base, the questions and the four arms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common.configlib import param
from common.errors import ConfigError


@dataclass(frozen=True)
class RagConfig:
    kb_files: list[str] = param(["configs/rag/kb.jsonl"], "knowledge-base documents, JSONL records {id, text}; the "
                                                         "shipped set is made from configs/curate-tiny-facts.jsonl "
                                                         "(python -m jobs.make_task rag-kb)")
    question_files: list[str] = param(["configs/rag/questions.jsonl"], "questions, JSONL records {question, answer, "
                                                                      "doc_id}: the reference answer, and the "
                                                                      "document that holds it (for recall@k)")
    base_model: Optional[str] = param(None, "model folder of the base arms (unset: model.path)")
    sft_model: Optional[str] = param(None, "model folder of the fine-tuned arms (unset: the pipeline's SFT model, "
                                           "<run.output_root>/<run.name>/sft/model)")
    top_k: int = param(3, "chunks retrieved per question into the prompt", gt=0)
    chunk_chars: int = param(400, "documents are cut at sentence ends into chunks of at most this many characters",
                             gt=0)
    max_new_tokens: int = param(32, "answer length cap in tokens (greedy)", gt=0)
    max_prompt_tokens: int = param(448, "prompts longer than this are cut from the left", gt=0)
    max_questions: Optional[int] = param(None, "answer at most this many questions (unset: all)", gt=0)
    retrieval_template: str = param("Answer the question using these passages.\n\n{passages}\n\nQuestion: "
                                    "{question}", "the user turn of a retrieval arm; {passages} are the top_k "
                                                  "chunks, numbered")
    plain_template: str = param("Question: {question}", "the user turn of an arm without retrieval")

    def check(self) -> None:
        for key, fields in (("retrieval_template", ("{passages}", "{question}")), ("plain_template", ("{question}",))):
            missing = [field for field in fields if field not in getattr(self, key)]
            if missing:
                raise ConfigError(f"{key} must contain {' and '.join(missing)}")
