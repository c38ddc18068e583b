"""Retrieval: chunking by hand, exact vector search, and a planted nearest example found by MiniLM."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.errors import DataError
from tunesmith.rag.chunking import chunk_text, load_docs
from tunesmith.rag.index import VectorIndex


pytestmark = pytest.mark.usefixtures("one_thread")


def test_chunks_pack_paragraphs_and_overlap_long_ones():
    text = "one two three\n\nfour five\n\n\n" + " ".join(f"w{i}" for i in range(12))
    chunks = chunk_text(text, "doc.md", max_words=5, overlap=2)
    assert [c.text for c in chunks] == [
        "one two three four five", "w0 w1 w2 w3 w4", "w3 w4 w5 w6 w7", "w6 w7 w8 w9 w10", "w9 w10 w11"]
    assert [c.source for c in chunks] == ["doc.md:1", "doc.md:6", "doc.md:6", "doc.md:6", "doc.md:6"]
    assert [c.text for c in chunk_text("a b\n\nc d", "x", max_words=5, overlap=1)] == ["a b c d"]


def test_load_docs_reads_txt_and_md_only(tmp_path):
    (tmp_path / "a.md").write_text("alpha beta")
    (tmp_path / "b.txt").write_text("gamma")
    (tmp_path / "c.pdf").write_bytes(b"%PDF")
    assert [c.text for c in load_docs(tmp_path)] == ["alpha beta", "gamma"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no text found"):
        load_docs(empty)
    with pytest.raises(DataError, match="not a folder"):
        load_docs(tmp_path / "missing")


def test_vector_index_returns_exact_neighbours_best_first():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(16)
    index.add(vectors)
    queries = vectors[[5, 77]] + 0.01 * rng.normal(size=(2, 16)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = index.search(queries, 3)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :3]
    assert [[m.key for m in row] for row in found] == truth.tolist()
    assert found[0][0].key == 5 and found[0][0].score == pytest.approx(float(queries[0] @ vectors[5]), abs=1e-4)
    assert index.search(queries[:1], 500)[0][-1].key in range(200)  # k above the size is capped
    assert VectorIndex(16).search(queries, 3) == [[], []]


def test_minilm_retrieves_the_planted_example():
    from tunesmith.rag.retrieve import Retriever

    passages = [
        "Question: How do I change the oil in my car?\nAnswer: Drain the old oil and refill.",
        "Question: What time does the library open?\nAnswer: At nine in the morning.",
        "Question: How long does a building permit take?\nAnswer: About ten weeks.",  # planted
        "Question: What is the best pizza topping?\nAnswer: Mushrooms.",
        "Question: Who wrote Hamlet?\nAnswer: Shakespeare.",
    ]
    r = Retriever(passages)
    hits = r.retrieve("how many weeks until my construction permit is approved", k=2)
    assert hits[0].key == 2 and hits[0].text == passages[2]
    assert hits[0].score > hits[1].score
    vec = r.embedder.encode(["some text"])
    assert vec.shape == (1, 384) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
