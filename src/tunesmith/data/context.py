"""Shared context: passages that the inputs of many rows contain, left out before two rows are compared.

A database schema, an instruction block, a pasted document or a template says nothing about
whether two examples are copies of each other, yet when it is most of the input it makes every
pair of rows that share it look alike: on a text-to-SQL set (a question plus the database's
columns in each input) a third of the rows came out as "near duplicates" of questions about the
same database. So a passage, CONTEXT_WORDS consecutive words (normalised), is context when at
least CONTEXT_ROWS distinct inputs contain it, and the words it covers are left out of a row's
input before the row is compared with others. Why these two numbers:

- a count, not a share of the file: a near-duplicate group is a handful of rows however large
  the file, while a schema may be shared by 5% of the rows (20 databases) or by 0.1% of a large
  file, and is context all the same. The price: CONTEXT_ROWS or more near copies of one input
  share their text verbatim like context does, so they look like context to each other and are
  not found as near duplicates (they are kept, never lost).
- a passage of 8 words, not a common word pair: context runs to many words, while the phrases that
  many questions share ("what is the", "how many") are short, and leaving those out would make
  short questions that are near copies look less alike. A common question opener right after
  the context ("... Question: what is the") is part of a shared passage and goes with it.
- an input that is nothing but shared context is compared whole.

Counting is hashed: one byte per bucket, SHARED_BUCKETS buckets (16 MB), saturating at 255. Two
passages share a bucket only by accident, and a row loses words only where every window over
them is counted often, so the rare collision costs nothing in practice.
"""

from __future__ import annotations

import numpy as np

from tunesmith.data.minhash import unique

CONTEXT_ROWS = 5  # distinct inputs that must contain a passage before it is context
CONTEXT_WORDS = 8  # words in a passage
SHARED_BUCKETS = 1 << 24
_MIX = np.random.default_rng(2).integers(1, 2**62, size=CONTEXT_WORDS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def new_table() -> np.ndarray:
    """An empty table of passage counts: (SHARED_BUCKETS,) uint8."""
    return np.zeros(SHARED_BUCKETS, dtype=np.uint8)


def passages(words: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash, first word position) of every CONTEXT_WORDS-word window that lies inside one row.

    `words` are the uint64 word hashes of all rows, concatenated; `lengths` the words per row.
    """
    n, k = len(words), CONTEXT_WORDS
    if n < k:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    h = np.zeros(n - k + 1, dtype=np.uint64)
    for j in range(k):  # position-weighted, so "a b" and "b a" differ
        h += words[j:n - k + 1 + j] * _MIX[j]
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    row_end = np.repeat(np.cumsum(lengths), lengths)[: n - k + 1]
    start = np.nonzero(np.arange(n - k + 1) + k <= row_end)[0]
    return h[start], start


def _bucket(hashes: np.ndarray) -> np.ndarray:
    return (hashes >> np.uint64(40)).astype(np.int64)  # the top 24 bits


def count(table: np.ndarray, words: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> None:
    """Add to `table` the passages of the rows marked in `rows` (bool per row), each once per row."""
    hashes, start = passages(words, lengths)
    row = np.repeat(np.arange(len(lengths)), lengths)[start]
    keep = rows[row]
    per_row = unique((row[keep].astype(np.int64) << 24) | _bucket(hashes[keep]))
    bucket, n = unique(per_row & (SHARED_BUCKETS - 1), counts=True)
    table[bucket] = np.minimum(table[bucket] + n, 255)


def combined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two tables counted together (saturating): the context of two files seen as one."""
    return np.minimum(a.astype(np.uint16) + b, 255).astype(np.uint8)


def context_mask(words: np.ndarray, lengths: np.ndarray, table: np.ndarray) -> np.ndarray:
    """True for each word inside a shared passage; a row whose words are all context gets none marked."""
    hashes, start = passages(words, lengths)
    hit = start[table[_bucket(hashes)] >= CONTEXT_ROWS]
    cover = np.zeros(len(words) + 1, dtype=np.int64)  # +1 at a passage's first word, -1 after its last
    np.add.at(cover, hit, 1)
    np.add.at(cover, hit + CONTEXT_WORDS, -1)
    context = np.cumsum(cover[:-1]) > 0
    row = np.repeat(np.arange(len(lengths)), lengths)
    all_context = np.bincount(row, weights=~context, minlength=len(lengths)) == 0
    return context & ~all_context[row]


def content(words: np.ndarray, lengths: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(word hashes, words per row) of each row without its shared context; every row keeps >= 1 word."""
    keep = ~context_mask(words, lengths, table)
    row = np.repeat(np.arange(len(lengths)), lengths)
    return words[keep], np.bincount(row[keep], minlength=len(lengths))
