"""A retriever: passages embedded once into a vector index; `retrieve(query, k)` gives the k nearest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tunesmith.rag.embeddings import Embedder
from tunesmith.rag.index import VectorIndex


@dataclass(frozen=True)
class Hit:
    text: str
    score: float  # cosine similarity
    key: int  # position of the passage in the list the retriever was built from


class Retriever:
    """Nearest passages by MiniLM cosine similarity."""

    def __init__(self, passages: Sequence[str], *, embedder: Embedder | None = None, batch_size: int = 32):
        self.passages = list(passages)
        self.embedder = embedder or Embedder()
        self.index = VectorIndex(self.embedder.dim)
        if self.passages:
            self.index.add(self.embedder.encode(self.passages, batch_size=batch_size))

    def retrieve(self, query: str, k: int = 3) -> list[Hit]:
        return self.retrieve_many([query], k)[0]

    def retrieve_many(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
        """The k nearest passages for each query, best first (one embedding pass for all queries)."""
        if not queries:
            return []
        matches = self.index.search(self.embedder.encode(list(queries)), k)
        return [[Hit(self.passages[m.key], m.score, m.key) for m in row] for row in matches]
