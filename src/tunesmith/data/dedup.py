"""Duplicate detection that scales: exact and same-input keys by hash, near duplicates by MinHash LSH.

Rows are fingerprinted as they stream past (a few dozen bytes each, in numpy arrays); groups are
found at the end by sorting, so the cost is O(n log n), never a comparison of every pair.
Near duplicates: word-bigram shingles (hashed in numpy) of the normalised input + output, 64 MinHash values per
row, LSH with 8 bands of 8, and every candidate pair verified on the stored signatures
(estimated Jaccard >= NEAR_THRESHOLD).
"""

from __future__ import annotations

import hashlib
from array import array
import itertools
import string
import unicodedata
import zlib
from dataclasses import dataclass

import numpy as np

NUM_PERM = 64
BANDS = 8
ROWS_PER_BAND = NUM_PERM // BANDS
NEAR_THRESHOLD = 0.7
BATCH = 2048
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_PUNCT_BYTES = bytes.maketrans(string.punctuation.encode(), b" " * len(string.punctuation))
_MASK64 = (1 << 64) - 1


def normalise_text(text: str) -> str:
    """Lower case, NFKC, punctuation to spaces, whitespace collapsed: what 'the same text' means here."""
    return normal_bytes(text).decode("utf-8", "surrogatepass")


def normal_bytes(text: str) -> bytes:
    """normalise_text as UTF-8 bytes (ASCII text takes the fast bytes.translate path)."""
    if text.isascii():
        return b" ".join(text.lower().encode().translate(_PUNCT_BYTES).split())
    text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().translate(_PUNCT).split()).encode("utf-8", "surrogatepass")


def input_output(example: dict) -> tuple[str, str]:
    """(everything before the last assistant turn, the last assistant turn) of a canonical example."""
    if "messages" not in example:
        return example.get("text", ""), ""
    messages = example["messages"]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    before = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:last] if m["role"] != "system")
    after = messages[last]["content"] if last < len(messages) else ""
    return before, after


def _key(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _params(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63 - 1, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63 - 1, size=NUM_PERM, dtype=np.uint64)
    return a, b


_A, _B = _params()
_BAND_MIX = np.array([0x9E3779B97F4A7C15 * (i + 1) & _MASK64 for i in range(ROWS_PER_BAND)], dtype=np.uint64)


def word_hashes(normal: bytes) -> list[int]:
    """crc32 of each word of normalised text (at least one value: the empty text hashes to 0)."""
    return list(map(zlib.crc32, normal.split())) or [0]


def minhash(rows: list[list[int]]) -> np.ndarray:
    """(rows, NUM_PERM) uint32 MinHash signatures of word-bigram shingles, from each row's word hashes.

    A row of one word is its own single shingle. Each permutation is a multiply-shift hash.
    """
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    words = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.uint64, count=int(lengths.sum()))
    ends = np.cumsum(lengths)
    bigrams = words * np.uint64(0xFF51AFD7ED558CCD)  # spread 32-bit word hashes over 64 bits
    bigrams[:-1] ^= words[1:] * np.uint64(0xC4CEB9FE1A85EC53)  # position i: words i and i + 1
    last = ends - 1
    keep = np.ones(len(words), dtype=bool)
    keep[last[lengths > 1]] = False  # the last word of a row starts no bigram
    shingles = bigrams[keep]
    counts = np.maximum(lengths - 1, 1)
    offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out = np.empty((len(rows), NUM_PERM), dtype=np.uint32)
    for k in range(NUM_PERM):  # one permutation at a time keeps the temporary arrays small
        hashed = (shingles * _A[k] + _B[k]) >> np.uint64(32)  # (n_shingles,)
        out[:, k] = np.minimum.reduceat(hashed, offsets)
    return out


def band_keys(signatures: np.ndarray) -> np.ndarray:
    """(rows, BANDS) uint64: one hash per band of ROWS_PER_BAND signature values."""
    sig = signatures.astype(np.uint64).reshape(len(signatures), BANDS, ROWS_PER_BAND)
    keys = (sig * _BAND_MIX).sum(axis=2, dtype=np.uint64)  # wraps mod 2**64, which is what we want
    return keys ^ np.arange(BANDS, dtype=np.uint64)


@dataclass
class Groups:
    """For every row (by position): the position of the first row it duplicates, or itself.

    exact: same normalised input and output; same_input: same normalised input;
    near: same near-duplicate group (transitively), first member's position.
    similarity: for near members, estimated Jaccard to the group's first row.
    """

    exact: np.ndarray
    same_input: np.ndarray
    near: np.ndarray
    similarity: np.ndarray


class Fingerprints:
    """Streaming fingerprints of rows; `groups()` finds exact, same-input and near-duplicate groups."""

    def __init__(self, near: bool = True):
        self.near = near
        self._exact = array("Q")  # 8 bytes a row, not a Python int object
        self._input = array("Q")
        self._pending: list[list[int]] = []
        self._sigs: list[np.ndarray] = []
        self._bands: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._exact)

    def add(self, input_text: str, output_text: str) -> int:
        """Fingerprint one row; returns its position."""
        ni, no = normal_bytes(input_text), normal_bytes(output_text)
        self._exact.append(_key(ni + b"\x00" + no))
        self._input.append(_key(ni))
        if self.near:
            self._pending.append(word_hashes(ni + b" " + no))
            if len(self._pending) >= BATCH:
                self._flush()
        return len(self._exact) - 1

    def _flush(self) -> None:
        if self._pending:
            sig = minhash(self._pending)
            self._bands.append(band_keys(sig))
            self._sigs.append(sig.astype(np.uint8))  # 8 bits per value are enough to verify candidates
            self._pending = []

    def exact_keys(self) -> np.ndarray:
        return np.frombuffer(self._exact, dtype=np.uint64).copy() if len(self._exact) else np.zeros(0, np.uint64)

    def input_keys(self) -> np.ndarray:
        return np.frombuffer(self._input, dtype=np.uint64).copy() if len(self._input) else np.zeros(0, np.uint64)

    def signatures(self) -> tuple[np.ndarray, np.ndarray]:
        """(band keys (n, BANDS), 8-bit signatures (n, NUM_PERM))."""
        self._flush()
        if not self._bands:
            return np.zeros((0, BANDS), np.uint64), np.zeros((0, NUM_PERM), np.uint8)
        bands, sigs = np.concatenate(self._bands), np.concatenate(self._sigs)
        self._bands, self._sigs = [bands], [sigs]
        return bands, sigs

    def groups(self) -> Groups:
        n = len(self)
        exact = first_of_equal(self.exact_keys())
        same_input = first_of_equal(self.input_keys())
        near, sim = np.arange(n), np.ones(n)
        if self.near and n:
            bands, sigs = self.signatures()
            near, sim = near_groups(bands, sigs, exact)
        return Groups(exact, same_input, near, sim)


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


def candidate_pairs(bands: np.ndarray) -> np.ndarray:
    """(m, 2) row pairs that share a band key (each with the first row of its bucket), deduplicated."""
    pairs = []
    for b in range(bands.shape[1]):
        first = first_of_equal(bands[:, b])
        members = np.nonzero(first != np.arange(len(first)))[0]
        pairs.append(np.stack([first[members], members], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def near_groups(bands: np.ndarray, sigs: np.ndarray, exact: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union verified LSH candidates into groups; returns (group first position, similarity to it)."""
    n = len(bands)
    keep = exact == np.arange(n)  # exact copies follow their original; compare originals only
    pairs = candidate_pairs(np.where(keep[:, None], bands, np.arange(n, dtype=np.uint64)[:, None] + np.uint64(1 << 63)))
    if len(pairs):
        agree = (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)
        pairs = pairs[agree >= NEAR_THRESHOLD]
    root = np.arange(n)
    for node, top in _union_find(pairs.tolist()).items():
        root[node] = top
    root = root[exact]  # an exact copy joins its original's group
    group_first = first_of_equal(root)
    sim = np.ones(n)
    moved = np.nonzero(group_first != np.arange(n))[0]
    sim[moved] = (sigs[moved] == sigs[group_first[moved]]).mean(axis=1)
    return group_first, sim


def _union_find(pairs: list[list[int]]) -> dict[int, int]:
    """Node -> smallest node of its component, for the nodes that appear in `pairs`."""
    parent: dict[int, int] = {}
    for a, b in pairs:
        ra, rb = _find(parent, a), _find(parent, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {node: _find(parent, node) for node in list(parent)}


def _find(parent: dict[int, int], i: int) -> int:
    while parent.setdefault(i, i) != i:
        parent[i] = parent.setdefault(parent[i], parent[i])
        i = parent[i]
    return i


@dataclass
class CrossMatches:
    """For each row of file A: the matching row position in file B, or -1."""

    exact: np.ndarray  # same normalised input and output
    same_input: np.ndarray  # same normalised input
    near: np.ndarray  # a verified near duplicate
    similarity: np.ndarray


def cross_matches(a: Fingerprints, b: Fingerprints) -> CrossMatches:
    """Rows of `a` that also occur in `b` (exact, same input, or near), for train/test leakage."""
    exact = _lookup(a.exact_keys(), b.exact_keys())
    same_input = _lookup(a.input_keys(), b.input_keys())
    near, sim = np.full(len(a), -1), np.zeros(len(a))
    if a.near and b.near and len(a) and len(b):
        bands_a, sigs_a = a.signatures()
        bands_b, sigs_b = b.signatures()
        pairs = candidate_pairs(np.concatenate([bands_b, bands_a]))  # b first: a pair's first is in b
        pairs = pairs[(pairs[:, 0] < len(b)) & (pairs[:, 1] >= len(b))]
        rows_a, rows_b = pairs[:, 1] - len(b), pairs[:, 0]
        agree = (sigs_a[rows_a] == sigs_b[rows_b]).mean(axis=1) if len(pairs) else np.zeros(0)
        ok = agree >= NEAR_THRESHOLD
        near[rows_a[ok]], sim[rows_a[ok]] = rows_b[ok], agree[ok]
    return CrossMatches(exact, same_input, near, sim)


def _lookup(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Position in `table` of each key (its first occurrence), or -1."""
    if not len(table):
        return np.full(len(keys), -1)
    order = np.argsort(table, kind="stable")
    sorted_table = table[order]
    at = np.clip(np.searchsorted(sorted_table, keys), 0, len(table) - 1)
    return np.where(sorted_table[at] == keys, order[at], -1)
