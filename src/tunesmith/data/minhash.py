"""MinHash signatures and LSH banding: which rows may be near copies, found without comparing every pair.

A row is a set of shingles: 64-bit hashes of its word bigrams (a one-word row is its word).
NUM_PERM multiply-shift permutations give each set a signature; two signatures agree at a
position with probability equal to the sets' Jaccard similarity, so the share of agreeing
positions estimates it (standard error sqrt(s(1-s)/NUM_PERM): 0.057 at s = 0.7).

LSH cuts each signature into BANDS bands of ROWS_PER_BAND values; rows that agree on a whole band
share a bucket and become candidates, which the caller verifies on the signatures. A pair at
similarity s becomes a candidate with probability 1 - (1 - s**ROWS_PER_BAND)**BANDS
(`candidate_probability`): 16 bands of 4 give 0.988 at s = 0.7 and 0.64 at s = 0.5. (8 bands of 8
gave 0.38 at 0.7: most pairs at the documented threshold were never looked at.) Verifying the
extra candidates costs one comparison of two 64-byte signatures each.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Callable

import numpy as np

NUM_PERM = 64
BANDS = 16
ROWS_PER_BAND = NUM_PERM // BANDS
WINDOW = 32  # buckets up to this size are compared pair by pair; larger ones by neighbours and first members
_MASK64 = (1 << 64) - 1


def candidate_probability(s: float, bands: int = BANDS, rows: int = ROWS_PER_BAND) -> float:
    """Probability that a pair at Jaccard similarity `s` shares at least one band (the LSH S-curve)."""
    return 1.0 - (1.0 - s**rows) ** bands


def word_hashes(normal: bytes) -> list[int]:
    """crc32 of each word of normalised text (at least one value: the empty text hashes to 0)."""
    return list(map(zlib.crc32, normal.split())) or [0]


def stack_words(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(all word hashes as uint64, words per row) of a batch of word-hash lists."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    words = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.uint64, count=int(lengths.sum()))
    return words, lengths


def shingles(words: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 shingles, shingles per row) from concatenated word hashes; every row needs >= 1 word.

    Shingle i of a row hashes words i and i + 1 (order matters: "a b" is not "b a"), so a row of
    k words has k - 1 shingles, and a row of one word has that word as its only shingle.
    """
    words = words.astype(np.uint64)
    ends = np.cumsum(lengths)
    bigrams = words * np.uint64(0xFF51AFD7ED558CCD)  # spread 32-bit word hashes over 64 bits
    bigrams[:-1] ^= words[1:] * np.uint64(0xC4CEB9FE1A85EC53)  # position i: words i and i + 1
    keep = np.ones(len(words), dtype=bool)
    keep[(ends - 1)[lengths > 1]] = False  # the last word of a row starts no bigram
    return bigrams[keep], np.maximum(lengths - 1, 1)


def _params(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63 - 1, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63 - 1, size=NUM_PERM, dtype=np.uint64)
    return a, b


_A, _B = _params()
_BAND_MIX = np.array([0x9E3779B97F4A7C15 * (i + 1) & _MASK64 for i in range(ROWS_PER_BAND)], dtype=np.uint64)


def signatures(shingle_hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(rows, NUM_PERM) uint32 MinHash signatures; `counts` (each >= 1) splits the shingles into rows."""
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    out = np.empty((len(counts), NUM_PERM), dtype=np.uint32)
    for k in range(NUM_PERM):  # one permutation at a time keeps the temporary arrays small
        hashed = (shingle_hashes * _A[k] + _B[k]) >> np.uint64(32)  # (n_shingles,)
        out[:, k] = np.minimum.reduceat(hashed, offsets)
    return out


def band_keys(sigs: np.ndarray) -> np.ndarray:
    """(rows, BANDS) uint32: one hash per band of ROWS_PER_BAND signature values.

    32 bits: two different bands share a key by accident for about n / 2**32 of the rows, and
    such a candidate is verified and dropped like any other; 4 bytes a key keeps 16 bands in 64 bytes a row.
    """
    sig = sigs.astype(np.uint64).reshape(len(sigs), BANDS, ROWS_PER_BAND)
    keys = (sig * _BAND_MIX).sum(axis=2, dtype=np.uint64)  # wraps mod 2**64, which is what we want
    return (keys ^ (keys >> np.uint64(32))).astype(np.uint32)


def agreement(sigs_a: np.ndarray, sigs_b: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of rows_a[k] of sigs_a and rows_b[k] of sigs_b: the share of positions that agree.

    In chunks of 32,768 pairs: the gathered signatures take 2 * 64 bytes a pair (4 MB a chunk), however many pairs.
    """
    out = np.empty(len(rows_a))
    for start in range(0, len(rows_a), 1 << 15):
        part = slice(start, start + (1 << 15))
        out[part] = (sigs_a[rows_a[part]] == sigs_b[rows_b[part]]).mean(axis=1)
    return out


def unique(values: np.ndarray, counts: bool = False):
    """Sorted distinct values (and how often each occurs), by sorting.

    np.unique is not used: on int64 arrays numpy 2.4 takes a hashing path that was 70x slower
    (4 s for 3 million values, against 0.06 s sorted).
    """
    s = np.sort(values, kind="stable")
    first = np.ones(len(s), dtype=bool)
    first[1:] = s[1:] != s[:-1]
    if not counts:
        return s[first]
    starts = np.nonzero(first)[0]
    return s[starts], np.diff(np.append(starts, len(s)))


def first_of_equal(keys: np.ndarray) -> np.ndarray:
    """For each position, the first position holding the same key (O(n log n) by sorting)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    run_first = order[np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))]
    out = np.empty(len(keys), dtype=np.int64)
    out[order] = run_first
    return out


def bucket_pairs(keys: np.ndarray, rows: np.ndarray | None = None, window: int = WINDOW) -> np.ndarray:
    """Unique pairs (earlier, later) of positions with the same key, as codes earlier * n + later (int64).

    Only positions marked in `rows` (bool, default all) take part. Each row is paired with the
    `window` - 1 rows before it in its bucket and with the bucket's first `window` - 1 rows: every
    pair of a bucket of up to `window` rows, and in a crowded bucket enough of them to chain its
    near copies together without comparing every pair.
    """
    n = len(keys)
    order = np.argsort(keys, kind="stable")  # within a bucket, positions keep their order
    if rows is not None:
        order = order[rows[order]]
    sorted_keys = keys[order]
    m = len(order)
    starts = np.ones(m, dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    start = np.maximum.accumulate(np.where(starts, np.arange(m), 0))  # where each row's bucket starts
    rank = np.arange(m) - start  # place in its bucket
    codes = [np.zeros(0, np.int64)]
    for d in range(1, window):
        later = np.nonzero(rank >= d)[0]
        if not len(later):
            break  # no bucket holds more than d rows
        codes.append(order[later - d] * n + order[later])  # the row d places before
        codes.append(order[start[later] + d - 1] * n + order[later])  # the bucket's d-th row
    return unique(np.concatenate(codes))


def candidate_pairs(bands: np.ndarray, rows: np.ndarray | None = None,
                    keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """(m, 2) unique pairs (earlier, later) that share a bucket in at least one band, sorted.

    `rows` (bool per row): only these take part. `keep(pairs) -> bool per pair`: a filter applied
    band by band (e.g. on the estimated similarity), so the pairs that fail it are never all held at once.
    """
    n = len(bands)
    codes = np.zeros(0, np.int64)
    for b in range(bands.shape[1] if n else 0):  # a running union: a pair found in many bands is held once
        found = np.setdiff1d(bucket_pairs(bands[:, b], rows), codes, assume_unique=True)
        if keep is not None and len(found):
            found = found[keep(np.stack([found // n, found % n], axis=1))]
        codes = unique(np.concatenate([codes, found]))
    return np.stack([codes // n, codes % n], axis=1)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """For each of n nodes, the smallest node of its connected component under `pairs` (union-find)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:  # path compression
            parent[i], i = root, parent[i]
        return root

    for a, b in np.asarray(pairs, dtype=np.int64).reshape(-1, 2).tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    while True:  # every node straight to its root, all at once (a root is its component's smallest node)
        up = parent[parent]
        if (up == parent).all():
            return parent
        parent = up
