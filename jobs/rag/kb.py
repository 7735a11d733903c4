"""The knowledge base: documents and questions read and checked, documents cut into chunks, and the shipped set
made from the curation fact file (configs/curate-tiny-facts.jsonl) by code, so anyone can regenerate it:

    python -m jobs.make_task rag-kb --out configs/rag/kb.jsonl
    python -m jobs.make_task rag-questions --out configs/rag/questions.jsonl

A document is `{"id", "text"}` (a "title" is optional); a question is `{"question", "answer", "doc_id"}`, doc_id
naming the document that holds the answer (for retrieval recall; optional)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from common.config import resolve_path
from common.errors import EmptyDatasetError, RecordError

FACTS = "configs/curate-tiny-facts.jsonl"
# attribute → (the sentence a document states it in, the question that asks for it)
FACT_TEMPLATES = {
    "capital": ("The capital of {subject} is {value}.", "What is the capital of {subject}?"),
    "melting point": ("{Subject} melts at {value} {unit}.", "What is the melting point of {subject}?"),
    "boiling point": ("{Subject} boils at {value} {unit}.", "What is the boiling point of {subject}?"),
    "freezing point": ("{Subject} freezes at {value} {unit}.", "What is the freezing point of {subject}?"),
    "speed": ("The speed of {subject} is {value} {unit}.", "What is the speed of {subject}?"),
    "上映时间": ("《{subject}》于{value}上映。", "《{subject}》是什么时候上映的？"),
    "出生日期": ("{subject}出生于{value}。", "{subject}是哪天出生的？"),
    "片长": ("《{subject}》片长{value}{unit}。", "《{subject}》的片长是多少分钟？"),
}
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s*")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    doc_id: str | None
    source: str  # file:line


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    text: str


def _fill(template: str, fact: dict) -> str:
    subject = fact["subject"]
    return template.format(subject=subject, Subject=subject[:1].upper() + subject[1:], value=fact["value"],
                           unit=fact.get("unit", "")).replace(" .", ".")


def fact_documents(facts: list[dict]) -> list[dict]:
    """One document per subject, its facts as sentences in file order."""
    by_subject: dict[str, list[str]] = {}
    for fact in facts:
        if fact["attribute"] in FACT_TEMPLATES:
            by_subject.setdefault(fact["subject"], []).append(_fill(FACT_TEMPLATES[fact["attribute"]][0], fact))
    joiner = {True: "", False: " "}
    return [{"id": f"doc-{i:03d}", "title": subject,
             "text": joiner[any("\u4e00" <= ch <= "\u9fff" for ch in subject)].join(sentences)}
            for i, (subject, sentences) in enumerate(by_subject.items())]


def fact_questions(facts: list[dict]) -> list[dict]:
    ids = {doc["title"]: doc["id"] for doc in fact_documents(facts)}
    return [{"question": _fill(FACT_TEMPLATES[fact["attribute"]][1], fact), "answer": fact["value"],
             "doc_id": ids[fact["subject"]]} for fact in facts if fact["attribute"] in FACT_TEMPLATES]


def read_facts() -> list[dict]:
    return [json.loads(line) for line in resolve_path(FACTS).read_text().splitlines() if line.strip()]


def _jsonl(path: str) -> list[tuple[str, dict]]:
    file = resolve_path(path)
    if not file.is_file():
        raise RecordError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{file}:{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise RecordError(f"{file}:{number}: not JSON ({exc.msg})") from None
    return rows


def load_documents(files: list[str]) -> list[Document]:
    docs = []
    for where, row in (pair for path in files for pair in _jsonl(path)):
        if not isinstance(row.get("text"), str) or not row["text"].strip() or "id" not in row:
            raise RecordError(f"{where}: a document needs an 'id' and a non-empty 'text'")
        docs.append(Document(str(row["id"]), row["text"]))
    if not docs:
        raise EmptyDatasetError(f"the knowledge base {files} holds no documents")
    return docs


def load_questions(files: list[str], doc_ids: set[str]) -> list[Question]:
    questions = []
    for where, row in (pair for path in files for pair in _jsonl(path)):
        if not str(row.get("question", "")).strip() or not str(row.get("answer", "")).strip():
            raise RecordError(f"{where}: a question needs a non-empty 'question' and a reference 'answer'")
        doc_id = row.get("doc_id")
        if doc_id is not None and str(doc_id) not in doc_ids:
            raise RecordError(f"{where}: doc_id {doc_id!r} names no document of the knowledge base")
        questions.append(Question(str(row["question"]), str(row["answer"]), None if doc_id is None else str(doc_id),
                                  where))
    if not questions:
        raise EmptyDatasetError(f"no questions in {files}")
    return questions


def chunk_documents(docs: list[Document], max_chars: int) -> list[Chunk]:
    """Each document cut at sentence ends into chunks of at most max_chars (a longer sentence is a chunk alone)."""
    chunks = []
    for doc in docs:
        current = ""
        for sentence in (s for s in _SENTENCE.split(doc.text) if s.strip()):
            if current and len(current) + 1 + len(sentence) > max_chars:
                chunks.append(Chunk(doc.id, current))
                current = ""
            current = f"{current} {sentence}".strip() if current else sentence
        if current:
            chunks.append(Chunk(doc.id, current))
    return chunks

