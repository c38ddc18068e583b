"""Duplicates that scale: exact copies, conflicts, near duplicates beyond the shared context, overlap between files.

What counts (docs/data-quality.md shows each with an example):

- exact: the same normalised input and output.
- conflict: the same normalised input, another output.
- near duplicate: an example copied with small changes. Its input, once the shared context is
  left out (`context`), and its output are both near copies of another row's: Jaccard
  similarity of their word bigrams >= NEAR_THRESHOLD, each.
- near input (a possible conflict): the inputs are near copies beyond the shared context, the
  outputs are not. Usually two distinct examples (the same question about two databases),
  sometimes two answers to one question.

Word bigrams are strict on short texts: a word changed in the middle of a seven-word question
leaves 4 of its 6 bigrams (Jaccard 4/8 = 0.5), so it counts as another question. That is the safe
side: "how many cars are heavier than 3000" and "... lighter than 3000" must not be one example.

How: rows are fingerprinted as they stream past, with two 8-byte keys in memory; the normalised
input and the word hashes of input and output go to temporary files (in memory up to
SPOOL_MEMORY each). At the end the input words are read back to count shared passages, then to
sign each input without its context (MinHash, `minhash`); LSH buckets give candidate pairs, and
each candidate whose estimated similarity is at least PREFILTER is read back and compared
exactly, so no decision rests on an estimate. Groups come from sorting and union-find: O(n log n),
never a comparison of every pair.
"""

from __future__ import annotations

import hashlib
import re
import string
import tempfile
import unicodedata
from array import array
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Callable, Iterator

import numpy as np

from tunesmith.data import context as C  # noqa: N812
from tunesmith.data.minhash import (BANDS, NUM_PERM, agreement, band_keys, candidate_pairs, components, first_of_equal,
                                    shingles, signatures, stack_words, unique, word_hashes)

NEAR_THRESHOLD = 0.7
PREFILTER = 0.5  # candidates estimated at least this alike are compared exactly (a pair at 0.7 passes 99.9%)
SPOOL_MEMORY = 2 << 20  # bytes per temporary file kept in memory; past that it is a file on disk
BATCH = 2048
SNIPPET_WORDS = 12
KINDS = ("", "exact", "conflict", "near", "near_input")  # what a row is to the row it cites (Groups.kind)
# The kinds that matter between preference pairs: copies of a whole pair. Several pairs on one
# prompt are how preference data is made, not a conflict (`preference` finds contradicting ones).
PAIR_KINDS = ("exact", "near")
SYMBOLS = "<>=!+-*/%^&|~"  # punctuation that changes meaning ("x > 5" is not "x < 5"): kept, as words of their own
_QUIET = "".join(c for c in string.punctuation if c not in SYMBOLS)
_PUNCT = str.maketrans({c: " " for c in _QUIET})
_PUNCT_BYTES = bytes.maketrans(_QUIET.encode(), b" " * len(_QUIET))
_SYMBOL = re.compile("([" + re.escape(SYMBOLS) + "])")
_SYMBOL_BYTES = re.compile(b"([" + re.escape(SYMBOLS).encode() + b"])")


def normalise_text(text: str) -> str:
    """Lower case, NFKC, punctuation to spaces (but SYMBOLS as words), whitespace collapsed: 'the same text' here."""
    return normal_bytes(text).decode("utf-8", "surrogatepass")


def normal_bytes(text: str) -> bytes:
    """normalise_text as UTF-8 bytes (ASCII text takes the fast bytes.translate path)."""
    if text.isascii():
        return b" ".join(_SYMBOL_BYTES.sub(rb" \1 ", text.lower().encode().translate(_PUNCT_BYTES)).split())
    text = unicodedata.normalize("NFKC", text)
    return " ".join(_SYMBOL.sub(r" \1 ", text.lower().translate(_PUNCT)).split()).encode("utf-8", "surrogatepass")


def input_output(example: dict) -> tuple[str, str]:
    """(everything before the last assistant turn, the last assistant turn) of a canonical example.

    A preference pair's output is both answers, in order: a copy of a pair is a copy of the whole
    pair, and the same prompt with other answers is another pair.
    """
    if "messages" not in example:
        return example.get("text", ""), ""
    messages = example["messages"]
    if "chosen" in example:
        before = "\n".join(f"{m['role']}: {m['content']}" for m in messages if m["role"] != "system")
        return before, f"chosen: {example['chosen']}\nrejected: {example['rejected']}"
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    before = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:last] if m["role"] != "system")
    after = messages[last]["content"] if last < len(messages) else ""
    return before, after


def key(data: bytes) -> int:
    """An 8-byte hash of `data` (of normalised text: the same text has the same key)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# ------------------------------------------------------------------ what streams to disk


class _Spool:
    """Per row: word hashes (and, when `text`, the normalised text), appended in batches, read back by batch or row."""

    def __init__(self, text: bool):
        self._words = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        self._text = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) if text else None
        self._n_words = array("I")  # 4 bytes a row
        self._n_bytes = array("I")
        self._starts: tuple[np.ndarray, np.ndarray] | None = None  # where each row starts, once reading begins

    def append(self, normals: list[bytes]) -> None:
        flat, lengths = stack_words([word_hashes(t) for t in normals])
        self._words.seek(0, 2)
        self._words.write(flat.astype(np.uint32).tobytes())
        self._n_words.extend(lengths.tolist())
        if self._text is not None:
            self._text.seek(0, 2)
            self._text.write(b"".join(normals))
            self._n_bytes.extend(map(len, normals))
        self._starts = None

    def batches(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row, concatenated uint64 word hashes, words per row) for every BATCH rows, in order."""
        lengths = np.frombuffer(self._n_words, dtype=np.uint32).astype(np.int64)
        self._words.seek(0)
        for first in range(0, len(lengths), BATCH):
            part = lengths[first:first + BATCH]
            data = self._words.read(int(part.sum()) * 4)
            yield first, np.frombuffer(data, dtype=np.uint32).astype(np.uint64), part

    def words(self, i: int) -> np.ndarray:
        """The uint64 word hashes of row i."""
        starts = self._row_starts()[0]
        self._words.seek(int(starts[i]) * 4)
        return np.frombuffer(self._words.read(int(starts[i + 1] - starts[i]) * 4), dtype=np.uint32).astype(np.uint64)

    def text(self, i: int) -> bytes:
        """The normalised text of row i (b"" when this spool keeps no text)."""
        if self._text is None:
            return b""
        starts = self._row_starts()[1]
        self._text.seek(int(starts[i]))
        return self._text.read(int(starts[i + 1] - starts[i]))

    def _row_starts(self) -> tuple[np.ndarray, np.ndarray]:
        if self._starts is None:
            self._starts = tuple(np.concatenate(([0], np.cumsum(np.frombuffer(a, dtype=np.uint32), dtype=np.int64)))
                                 for a in (self._n_words, self._n_bytes))
        return self._starts


class _Sets:
    """Exact shingle sets of spooled rows (of each input beyond its context when a table is given), cached.

    `load(rows)` computes many at once (one vectorised pass); a row asked for without it is loaded alone.
    """

    def __init__(self, spool: _Spool, table: np.ndarray | None = None):
        self.spool, self.table = spool, table
        self._sets: dict[int, np.ndarray] = {}
        self._context: dict[int, np.ndarray] = {}  # per word: inside shared context (inputs only)

    def load(self, rows: np.ndarray) -> None:
        todo = [int(i) for i in unique(np.asarray(rows)) if int(i) not in self._sets]
        for start in range(0, len(todo), BATCH):
            part = todo[start:start + BATCH]
            per_row = [self.spool.words(i) for i in part]
            words, lengths = np.concatenate(per_row), np.fromiter(map(len, per_row), np.int64, len(part))
            mask = (C.context_mask(words, lengths, self.table) if self.table is not None
                    else np.zeros(len(words), dtype=bool))
            kept = np.bincount(np.repeat(np.arange(len(part)), lengths)[~mask], minlength=len(part))
            sh, counts = shingles(words[~mask], kept)
            for i, row_mask, row_sh in zip(part, np.split(mask, np.cumsum(lengths)[:-1]),
                                           np.split(sh, np.cumsum(counts)[:-1])):
                self._sets[i], self._context[i] = unique(row_sh), row_mask

    def __call__(self, i: int) -> np.ndarray:
        if i not in self._sets:
            self.load(np.array([i]))
        return self._sets[i]

    def context(self, i: int) -> np.ndarray:
        """Per word of row i: True inside shared context."""
        self(i)
        return self._context[i]


def jaccard(left: _Sets, right: _Sets, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair (row of left, row of right)."""
    pairs = np.asarray(pairs).reshape(-1, 2)
    left.load(pairs[:, 0])
    right.load(pairs[:, 1])
    out = np.empty(len(pairs))
    for k, (i, j) in enumerate(pairs.tolist()):
        a, b = left(i), right(j)
        shared = len(np.intersect1d(a, b, assume_unique=True))
        out[k] = shared / (len(a) + len(b) - shared)
    return out


# ------------------------------------------------------------------ why two rows match


@dataclass(frozen=True)
class Why:
    """Why two rows match: the similarity of their inputs (beyond the context) and outputs, and what the inputs share."""

    input_similarity: float
    output_similarity: float
    shared: str = ""  # the longest run of words both inputs hold beyond the context (up to SNIPPET_WORDS)
    context_words: int = 0  # words of the first row's input left out as shared context

    def describe(self) -> str:
        """e.g. 'inputs 0.86 alike beyond 41 words of shared context, outputs 0.91; in common: "..."'."""
        beyond = f" beyond {self.context_words} words of shared context" if self.context_words else ""
        text = f"inputs {self.input_similarity:.2f} alike{beyond}, outputs {self.output_similarity:.2f}"
        return text + (f'; in common: "{self.shared}"' if self.shared else "")


def explain(a: _Sets, i: int, b: _Sets, j: int, sims: tuple[float, float]) -> Why:
    """Why row i of `a` matches row j of `b` (input sets, with their context), given their similarities."""
    words = []
    for sets, row in ((a, i), (b, j)):
        text = sets.spool.text(row).decode("utf-8", "surrogatepass").split() or [""]
        words.append([w for w, c in zip(text, sets.context(row)) if not c])
    m = SequenceMatcher(None, *words, autojunk=False).find_longest_match(0, len(words[0]), 0, len(words[1]))
    common = words[0][m.a:m.a + m.size]
    snippet = " ".join(common[:SNIPPET_WORDS]) + (" ..." if len(common) > SNIPPET_WORDS else "")
    return Why(float(sims[0]), float(sims[1]), snippet, int(a.context(i).sum()))


# ------------------------------------------------------------------ groups in one file


@dataclass
class Groups:
    """Per row (by position): its groups, and the earlier row its finding cites.

    exact / same_input / near / near_input: the first position of the row's group (itself when
    alone). near groups: near duplicates and exact copies, transitively. near_input groups: rows
    whose inputs are alike beyond the context, whatever their outputs (they hold the near and
    same-input groups: what must stay inside one split).
    kind: index into KINDS, what the row is to `partner`, the first that holds of: an exact copy, a
    conflict (same input, another output) or a near duplicate with the same input, a near
    duplicate, a near input; 0 = none.
    partner: the row cited (its most alike earlier match, else the first of its group), or -1.
    input_similarity / output_similarity: Jaccard with `partner` (inputs beyond the context).
    context_rows: how many rows had shared context left out of their input.
    """

    exact: np.ndarray
    same_input: np.ndarray
    near: np.ndarray
    near_input: np.ndarray
    kind: np.ndarray
    partner: np.ndarray
    input_similarity: np.ndarray
    output_similarity: np.ndarray
    context_rows: int = 0
    explain: Callable[[int, int, tuple[float, float]], Why] | None = None

    def kind_of(self, i: int) -> str:
        return KINDS[int(self.kind[i])]

    def why(self, i: int) -> Why:
        """Why row i matches its partner: the similarities, and the text they share beyond the context."""
        sims = (float(self.input_similarity[i]), float(self.output_similarity[i]))
        return self.explain(i, int(self.partner[i]), sims) if self.explain else Why(*sims)


class Fingerprints:
    """Streaming fingerprints of rows; `groups()` finds exact, conflicting and near-duplicate groups."""

    def __init__(self, near: bool = True):
        self.near = near
        self._exact = array("Q")  # 8 bytes a row, not a Python int object
        self._input = array("Q")
        self._pending: list[tuple[bytes, bytes]] = []
        self._inputs = _Spool(text=True) if near else None
        self._outputs = _Spool(text=False) if near else None
        self._table: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._exact)

    def add(self, input_text: str, output_text: str) -> int:
        """Fingerprint one row; returns its position."""
        ni, no = normal_bytes(input_text), normal_bytes(output_text)
        self._exact.append(key(ni + b"\x00" + no))
        self._input.append(key(ni))
        if self.near:
            self._pending.append((ni, no))
            if len(self._pending) >= BATCH:
                self._flush()
        return len(self._exact) - 1

    def _flush(self) -> None:
        if self._pending:
            self._inputs.append([i for i, _ in self._pending])
            self._outputs.append([o for _, o in self._pending])
            self._pending, self._table = [], None

    def exact_keys(self) -> np.ndarray:
        return np.frombuffer(self._exact, dtype=np.uint64).copy() if len(self._exact) else np.zeros(0, np.uint64)

    def input_keys(self) -> np.ndarray:
        return np.frombuffer(self._input, dtype=np.uint64).copy() if len(self._input) else np.zeros(0, np.uint64)

    def shared(self) -> np.ndarray:
        """The context table of this file: how many distinct inputs hold each passage (`context`)."""
        self._flush()
        if self._table is None:
            keys = self.input_keys()
            distinct = first_of_equal(keys) == np.arange(len(keys))  # a repeated input counts once
            self._table = C.new_table()
            for first, words, lengths in self._inputs.batches():
                C.count(self._table, words, lengths, distinct[first:first + len(lengths)])
        return self._table

    def input_signatures(self, table: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(band keys (n, BANDS) uint32, MinHash signatures (n, NUM_PERM) uint8, rows with context left out)."""
        self._flush()
        bands, sigs = np.empty((len(self), BANDS), np.uint32), np.empty((len(self), NUM_PERM), np.uint8)
        with_context = 0
        for first, words, lengths in self._inputs.batches():
            words, kept = C.content(words, lengths, table)
            sig = signatures(*shingles(words, kept))
            bands[first:first + len(sig)] = band_keys(sig)
            sigs[first:first + len(sig)] = sig  # the low 8 bits of each value are enough to rank candidates
            with_context += int((kept < lengths).sum())
        return bands, sigs, with_context

    def groups(self, table: np.ndarray | None = None) -> Groups:
        """Exact, same-input, near and near-input groups of every row, and what each row's finding cites.

        `table`: the context to leave out (default: this file's own, `shared()`); give
        `context.combined(a.shared(), b.shared())` to count another file's rows towards it too.
        """
        n = len(self)
        exact, same = first_of_equal(self.exact_keys()), first_of_equal(self.input_keys())
        if not (self.near and n):
            return _plain_groups(exact, same)
        table = self.shared() if table is None else table
        inputs, outputs = _Sets(self._inputs, table), _Sets(self._outputs)
        originals = np.nonzero(exact == np.arange(n))[0]  # an exact copy follows its original
        bands, sigs, with_context = self.input_signatures(table)
        pairs, in_sim = _alike_inputs(bands, sigs, originals, inputs)
        member = np.nonzero(same != np.arange(n))[0]
        pairs = np.concatenate([pairs, np.stack([same[member], member], axis=1)])
        in_sim = np.concatenate([in_sim, np.ones(len(member))])
        out_sim = np.ones(len(pairs))
        differ = exact[pairs[:, 1]] != exact[pairs[:, 0]]  # an exact copy of the first of its input needs no look
        out_sim[differ] = jaccard(outputs, outputs, pairs[differ])
        copies = np.nonzero(exact != np.arange(n))[0]
        near_pairs = np.concatenate([pairs[out_sim >= NEAR_THRESHOLD], np.stack([exact[copies], copies], axis=1)])
        g = Groups(exact, same, components(n, near_pairs), components(n, pairs), np.zeros(n, np.int8),
                   np.full(n, -1), np.zeros(n), np.zeros(n), with_context,
                   lambda i, j, sims: explain(inputs, i, inputs, j, sims))

        def similar(rows: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            both = np.stack([rows, others], axis=1)
            return jaccard(inputs, inputs, both), jaccard(outputs, outputs, both)

        _cite(g, pairs, in_sim, out_sim, similar)
        return g


def _plain_groups(exact: np.ndarray, same: np.ndarray) -> Groups:
    """Groups without near-duplicate detection: exact copies and conflicts only."""
    n = len(exact)
    g = Groups(exact, same, exact.copy(), same.copy(), np.zeros(n, np.int8), np.full(n, -1), np.ones(n), np.zeros(n))
    member, copy = np.nonzero(same != np.arange(n))[0], np.nonzero(exact != np.arange(n))[0]
    _set(g, member, "conflict", same[member], 1.0, 0.0)
    _set(g, copy, "exact", exact[copy], 1.0, 1.0)
    return g


def _alike_inputs(bands: np.ndarray, sigs: np.ndarray, rows: np.ndarray, inputs: _Sets) -> tuple[np.ndarray, np.ndarray]:
    """(pairs (earlier, later) among `rows` whose inputs are near copies beyond the context, their Jaccard)."""
    taking_part = np.zeros(len(bands), dtype=bool)
    taking_part[rows] = True
    pairs = candidate_pairs(bands, taking_part, lambda p: agreement(sigs, sigs, p[:, 0], p[:, 1]) >= PREFILTER)
    sim = jaccard(inputs, inputs, pairs)
    ok = sim >= NEAR_THRESHOLD
    return pairs[ok], sim[ok]


def _cite(g: Groups, pairs: np.ndarray, in_sim: np.ndarray, out_sim: np.ndarray,
          similar: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    """Fill kind, partner and similarities from the alike pairs (earlier, later).

    Each step overwrites the ones before, so a row ends as the most telling thing it is:
    near input < near duplicate < same input (conflict, or near duplicate of a row with that
    input) < exact copy.
    """
    n, at = len(g.exact), np.arange(len(g.exact))
    one_input = g.same_input[pairs[:, 0]] == g.same_input[pairs[:, 1]]
    alike = out_sim >= NEAR_THRESHOLD
    new_input = g.same_input == at  # rows whose input did not occur before (the others are set below)
    for kind, first, ok, rows in (("near_input", g.near_input, ~one_input & ~alike, new_input & (g.near == at)),
                                  ("near", g.near, ~one_input & alike, new_input)):
        best = np.nonzero(ok)[0][_best_earlier(pairs[ok], in_sim[ok] + out_sim[ok])]  # each row's best earlier match,
        led = rows & (first != at)  # else, when only later rows link it to its group, the group's first
        led[pairs[best, 1]] = False
        led = np.nonzero(led)[0]
        _set(g, led, kind, first[led], *similar(led, first[led]))
        _set(g, pairs[best, 1], kind, pairs[best, 0], in_sim[best], out_sim[best])
    with_first = np.nonzero(one_input & (pairs[:, 0] == g.same_input[pairs[:, 1]]))[0]  # (first of its input, row)
    _set(g, pairs[with_first, 1], "conflict", pairs[with_first, 0], 1.0, out_sim[with_first])
    ok = one_input & alike
    best = np.nonzero(ok)[0][_best_earlier(pairs[ok], out_sim[ok])]
    _set(g, pairs[best, 1], "near", pairs[best, 0], 1.0, out_sim[best])
    copies = np.nonzero(g.exact != np.arange(n))[0]
    _set(g, copies, "exact", g.exact[copies], 1.0, 1.0)


def _set(g: Groups, rows: np.ndarray, kind, partner, in_sim, out_sim) -> None:
    g.kind[rows] = KINDS.index(kind) if isinstance(kind, str) else kind
    g.partner[rows], g.input_similarity[rows], g.output_similarity[rows] = partner, in_sim, out_sim


def _best_earlier(pairs: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices into `pairs` (earlier, later) of the highest-scoring pair of each later row."""
    if not len(pairs):
        return np.zeros(0, np.int64)
    order = np.lexsort((-score, pairs[:, 1]))
    later = pairs[order, 1]
    first = np.ones(len(order), dtype=bool)
    first[1:] = later[1:] != later[:-1]
    return order[first]


# ------------------------------------------------------------------ overlap between two files


@dataclass
class CrossMatches:
    """For each row of file A: the matching row position in file B, or -1.

    exact: the same normalised input and output; same_input: the same normalised input;
    near: the row of B whose input is most alike beyond the shared context of both files
    (Jaccard >= NEAR_THRESHOLD), whatever the outputs; input_similarity / output_similarity: with
    that row (the whole example is a near copy when both are >= NEAR_THRESHOLD).
    """

    exact: np.ndarray
    same_input: np.ndarray
    near: np.ndarray
    input_similarity: np.ndarray
    output_similarity: np.ndarray
    explain: Callable[[int, int, tuple[float, float]], Why] | None = None

    def why(self, i: int) -> Why:
        """Why row i of A matches its near row of B."""
        sims = (float(self.input_similarity[i]), float(self.output_similarity[i]))
        return self.explain(i, int(self.near[i]), sims) if self.explain and self.near[i] >= 0 else Why(*sims)


def cross_matches(a: Fingerprints, b: Fingerprints) -> CrossMatches:
    """Rows of `a` that also occur in `b` (exact, same input, or a near input), for train/test leakage.

    Context is counted over both files together: a schema that the training rows share is context
    in the test rows too, however few of them there are.
    """
    exact = lookup(a.exact_keys(), b.exact_keys())
    same_input = lookup(a.input_keys(), b.input_keys())
    near, in_sim, out_sim = np.full(len(a), -1), np.zeros(len(a)), np.zeros(len(a))
    if not (a.near and b.near and len(a) and len(b)):
        return CrossMatches(exact, same_input, near, in_sim, out_sim)
    table = C.combined(a.shared(), b.shared())
    bands_a, sigs_a, _ = a.input_signatures(table)
    bands_b, sigs_b, _ = b.input_signatures(table)
    nb = len(b)

    def promising(p: np.ndarray) -> np.ndarray:  # a pair (row of b, row of a) estimated alike enough to compare
        across = (p[:, 0] < nb) & (p[:, 1] >= nb)
        across[across] = agreement(sigs_b, sigs_a, p[across, 0], p[across, 1] - nb) >= PREFILTER
        return across

    pairs = candidate_pairs(np.concatenate([bands_b, bands_a]), keep=promising)  # b first: a pair's earlier row is in b
    pairs = np.stack([pairs[:, 1] - nb, pairs[:, 0]], axis=1)  # (row of a, row of b)
    inputs_a, inputs_b = _Sets(a._inputs, table), _Sets(b._inputs, table)
    sim = jaccard(inputs_a, inputs_b, pairs)
    pairs, sim = pairs[sim >= NEAR_THRESHOLD], sim[sim >= NEAR_THRESHOLD]
    outs = jaccard(_Sets(a._outputs), _Sets(b._outputs), pairs)
    best = _best_earlier(pairs[:, ::-1], sim + outs)  # per row of a, its most alike row of b
    rows = pairs[best, 0]
    near[rows], in_sim[rows], out_sim[rows] = pairs[best, 1], sim[best], outs[best]
    return CrossMatches(exact, same_input, near, in_sim, out_sim,
                        lambda i, j, sims: explain(inputs_a, i, inputs_b, j, sims))


def lookup(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Position in `table` of each key (its first occurrence), or -1."""
    if not len(table):
        return np.full(len(keys), -1)
    order = np.argsort(table, kind="stable")
    sorted_table = table[order]
    at = np.clip(np.searchsorted(sorted_table, keys), 0, len(table) - 1)
    return np.where(sorted_table[at] == keys, order[at], -1)
