"""Dense retrieval over the knowledge base's chunks with the curation encoder (all-MiniLM-L6-v2, bundled offline):
chunks and questions embedded L2-normalised, the top k chunks by cosine similarity."""

from __future__ import annotations

import numpy as np

from jobs.curation.dedup import encode, load_encoder
from jobs.rag.kb import Chunk


class Retriever:
    def __init__(self, chunks: list[Chunk], max_tokens: int = 256):
        self.chunks = chunks
        self.model = load_encoder(max_tokens)
        self.vectors = encode(self.model, [chunk.text for chunk in chunks])

    def top_k(self, questions: list[str], k: int) -> list[list[Chunk]]:
        """The k most similar chunks to each question, best first (ties: the earlier chunk)."""
        scores = encode(self.model, questions) @ self.vectors.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[self.chunks[i] for i in row] for row in order]
