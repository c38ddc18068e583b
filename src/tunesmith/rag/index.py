"""A vector index over unit vectors, on usearch.

Why usearch: one small self-contained wheel (no BLAS or OpenMP runtime to match, unlike
faiss-cpu), maintained, with both exact search (used below a few thousand vectors, so small
collections give the true nearest neighbours, deterministically) and HNSW for large ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_BELOW = 5000  # brute force is instant at this size and never misses a neighbour


@dataclass(frozen=True)
class Match:
    key: int
    score: float  # cosine similarity, 1.0 = same direction


class VectorIndex:
    """Add (N, D) unit vectors under keys 0..N-1, then search by cosine similarity."""

    def __init__(self, dim: int):
        from usearch.index import Index

        self._index = Index(ndim=dim, metric="cos", dtype="f32")
        self.dim = dim

    def __len__(self) -> int:
        return len(self._index)

    def add(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        start = len(self._index)
        self._index.add(np.arange(start, start + len(vectors), dtype=np.uint64), vectors, threads=1)

    def search(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        """The k best matches for each query, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self._index) == 0 or k <= 0:
            return [[] for _ in queries]
        k = min(k, len(self._index))
        found = self._index.search(queries, k, exact=len(self._index) < EXACT_BELOW, threads=1)
        # usearch answers one query with Matches and several with BatchMatches
        rows = [found] if len(queries) == 1 else [found[i] for i in range(len(queries))]
        # its "cos" metric is a distance: 1 - cosine similarity
        return [[Match(int(key), float(1.0 - d)) for key, d in zip(m.keys, m.distances)] for m in rows]
