"""Diversity-filter throughput: all-MiniLM-L6-v2 embedding, then the blocked-matrix greedy filter
(jobs/curation/dedup.py) against a naive per-pair Python loop on the same N embeddings. Not a test.

    .venv/bin/python bench/curate_dedup.py [--n 2000] [--threshold 0.85] [--pawsx 500]

Texts are real SFT/multi-turn conversations from ../shared/data (repeated when N exceeds them, which
also gives the filter exact duplicates to drop). --pawsx N also prints precision/recall of
"similarity >= threshold ⇒ paraphrase" on N PAWS-X zh pairs.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

from common.records import read_records
from jobs.curation.dedup import encode, greedy_dedup, load_encoder
from jobs.curation.rows import as_sft, embedding_text

DATA = Path(__file__).resolve().parent.parent / ".." / "shared" / "data"
SOURCES = ("sft/llms-from-scratch/instruction-data.json", "sft/self-instruct/seed_tasks.jsonl",
           "sft/self-instruct/user_oriented_instructions.jsonl", "multiturn/fastchat/dummy_conversation.json",
           "multiturn/oasst-threads/derived_longest_threads.jsonl", "multiturn/kdconv/film_test.json")


def naive_dedup(vectors: np.ndarray, threshold: float) -> list[int]:
    """The baseline: one Python-level dot product per (candidate, kept) pair."""
    kept: list[int] = []
    for i, vector in enumerate(vectors):
        if all(float(np.dot(vector, vectors[j])) < threshold for j in kept):
            kept.append(i)
    return kept


def texts(n: int) -> list[str]:
    pool = [embedding_text(as_sft(r)) for source in SOURCES for r in read_records(DATA / source)]
    return [pool[i % len(pool)] for i in range(n)]


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def pawsx_quality(model, pairs: int, threshold: float) -> str:
    with (DATA / "paraphrase" / "pawsx-zh" / "dev_2k.tsv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))[:pairs]
    a = encode(model, [r["sentence1"] for r in rows])
    b = encode(model, [r["sentence2"] for r in rows])
    predicted = (a * b).sum(axis=1) >= threshold
    actual = np.array([r["label"] == "1" for r in rows])
    true_pos = int((predicted & actual).sum())
    return (f"PAWS-X zh, {len(rows)} pairs, similarity >= {threshold} ⇒ paraphrase: "
            f"precision {true_pos / max(int(predicted.sum()), 1):.3f}, recall {true_pos / int(actual.sum()):.3f} "
            f"(paraphrase share {actual.mean():.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="conversations to embed and filter")
    parser.add_argument("--threshold", type=float, default=0.85, help="cosine similarity that counts as a duplicate")
    parser.add_argument("--block-size", type=int, default=1024, help="candidates per matrix product")
    parser.add_argument("--max-tokens", type=int, default=128, help="word pieces the encoder reads per text")
    parser.add_argument("--pawsx", type=int, default=0, help="also score N PAWS-X zh pairs (0: skip)")
    args = parser.parse_args()

    model, load_s = timed(load_encoder, args.max_tokens)
    batch = texts(args.n)
    vectors, embed_s = timed(encode, model, batch)
    print(f"encoder load {load_s:.1f} s; embedding {args.n} texts: {embed_s:.1f} s = {args.n / embed_s:.0f} texts/s")

    blocked, blocked_s = timed(greedy_dedup, vectors, args.threshold, args.block_size)
    naive, naive_s = timed(naive_dedup, vectors, args.threshold)
    assert naive == blocked.kept, "the blocked filter must keep exactly what the definition keeps"
    print(f"dedup N={args.n}: kept {len(blocked.kept)}, dropped {len(blocked.dropped)}")
    print(f"  blocked matrix : {blocked_s * 1e3:9.1f} ms = {args.n / blocked_s:,.0f} records/s")
    print(f"  naive pair loop: {naive_s * 1e3:9.1f} ms = {args.n / naive_s:,.0f} records/s")
    print(f"  speed-up {naive_s / blocked_s:.0f}x")
    if args.pawsx:
        print(pawsx_quality(model, args.pawsx, args.threshold))


if __name__ == "__main__":
    main()
