"""Near duplicates beyond the shared context: LSH recall at the threshold, shared schemas, copies, conflicts, leaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunesmith.data.check import CheckOptions, check
from tunesmith.data.dedup import NEAR_THRESHOLD, Fingerprints, cross_matches
from tunesmith.data.minhash import band_keys, candidate_probability, signatures
from tunesmith.data.prepare import prepare

SCHEMAS = Path(__file__).resolve().parent / "assets" / "shared-schema.jsonl"  # 4 databases x 10 questions, with SQL
ROWS = [json.loads(line) for line in SCHEMAS.read_text().splitlines()]
CARS = ROWS[0]["input"].split("\nQuestion:")[0]  # the car_1 database and its columns: 44 words every car row shares
COPY = {"input": CARS + "\nQuestion: What is the average weight of cars each year, please?",  # a reworded row 1
        "output": "SELECT avg(weight), year FROM cars_data GROUP BY year ORDER BY year"}
OTHER_ANSWER = {**COPY, "output": "SELECT year, count(*) FROM cars_data GROUP BY year"}  # row 1's question, new answer


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dup_findings(path: Path, **opts) -> list[tuple[int, str]]:
    return [(f.line, f.rule) for f in check(path, CheckOptions(**opts)).issues if f.rule.startswith(("dup.", "leak."))]


def test_banding_finds_pairs_at_the_threshold():
    """A pair at Jaccard ~0.7 shares a band >= 95% of the time (8 bands of 8 rows: 38%)."""
    rng = np.random.default_rng(0)
    pairs, shared, own = 400, 33, 7  # 33 shingles in common, 7 each of their own: Jaccard 33/47 = 0.702
    hashes = rng.integers(0, 2**63, size=(pairs, shared + 2 * own), dtype=np.uint64)
    a = np.concatenate([hashes[:, :shared], hashes[:, shared:shared + own]], axis=1)
    b = np.concatenate([hashes[:, :shared], hashes[:, shared + own:]], axis=1)
    sig = [signatures(x.reshape(-1), np.full(pairs, shared + own)) for x in (a, b)]
    found = (band_keys(sig[0]) == band_keys(sig[1])).any(axis=1).mean()
    assert candidate_probability(0.702) >= 0.95 and found >= 0.95, found


def test_a_shared_schema_is_context_not_similarity(tmp_path):
    """Questions about one database share its columns; none of the 40 rows is a near copy of another."""
    assert dup_findings(SCHEMAS) == []
    card = prepare(SCHEMAS, tmp_path / "out", near_duplicates="drop")
    assert card["kept"] == 40 and card["rejected_by_reason"] == {} and card["kept_with_warnings"] == {}


def test_a_reworded_copy_is_still_a_near_duplicate(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ROWS + [COPY])
    report = check(path)
    [near] = [f for f in report.issues if f.rule == "dup.near"]
    assert near.line == 41 and "near duplicate of line 1: inputs 0.83 alike beyond 50 words of shared context" in near.message
    assert 'in common: "average weight of cars each year"' in near.message
    card = prepare(path, tmp_path / "drop", near_duplicates="drop")
    assert card["rejected_by_reason"] == {"dup.near": 1} and card["kept"] == 40
    assert prepare(path, tmp_path / "keep")["kept_with_warnings"] == {"dup.near": 1}  # the default keeps it


def test_a_near_input_with_another_answer_is_a_possible_conflict_and_kept(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", ROWS + [OTHER_ANSWER])
    assert dup_findings(path) == [(41, "dup.near_input")]
    [finding] = [f for f in check(path).issues if f.rule == "dup.near_input"]
    assert "near copy of line 1's, the answer is not: inputs 0.83 alike" in finding.message and "outputs 0.38" in finding.message
    card = prepare(path, tmp_path / "out", near_duplicates="drop", split=(50, 25, 25))
    assert card["kept"] == 41 and card["kept_with_warnings"] == {"dup.near_input": 1}
    splits = [(tmp_path / "out" / f"{name}.jsonl").read_text().lower() for name in ("train", "validation", "test")]
    assert [text.count("average weight of cars each year") for text in splits].count(2) == 1  # one split holds both


def test_rows_with_near_copy_inputs_never_cross_splits(tmp_path):
    """Short questions with long, different answers: the whole examples differ, the questions nearly match."""
    rows = []
    for i in range(30):
        question = f"how do i apply for permit number n{i} in the city of town{i}"
        rows += [{"input": question, "output": f"fill in form {i} " + " ".join(f"step{i}x{k}" for k in range(30))},
                 {"input": question + " please", "output": f"call office {i} " + " ".join(f"other{i}y{k}" for k in range(30))}]
    card = prepare(jsonl(tmp_path / "d.jsonl", rows), tmp_path / "out", seed=3)
    assert card["kept"] == 60 and card["kept_with_warnings"] == {"dup.near_input": 30}
    where: dict[int, set[str]] = {}
    for name in ("train", "validation", "test"):
        for line in (tmp_path / "out" / f"{name}.jsonl").read_text().splitlines():
            where.setdefault(json.loads(line)["messages"][0]["content"].split()[7], set()).add(name)
    assert len(where) == 30 and all(len(s) == 1 for s in where.values())


def test_similarities_are_exact_jaccard_of_word_bigrams(tmp_path):
    words = "the permit office answers every request within ten working days".split()
    rows = [{"input": " ".join(words), "output": "yes"}, {"input": " ".join(words + ["usually"]), "output": "yes"}]
    fp = Fingerprints()
    for r in rows:
        fp.add(r["input"], r["output"])
    g = fp.groups()
    assert g.kind_of(1) == "near" and g.partner[1] == 0
    assert g.input_similarity[1] == pytest.approx(9 / 10) and g.output_similarity[1] == 1.0  # 9 bigrams of 10 shared
    assert NEAR_THRESHOLD == 0.7


def test_leaks_across_files_see_the_context_of_both(tmp_path):
    """Test questions about the training set's databases are not leaks; a reworded training row is."""
    train = jsonl(tmp_path / "train.jsonl", [r for i, r in enumerate(ROWS) if i % 10 < 8])
    test = jsonl(tmp_path / "test.jsonl", [r for i, r in enumerate(ROWS) if i % 10 >= 8] + [COPY])
    assert dup_findings(test, against=train) == [(9, "leak.near")]
    [leak] = [f for f in check(test, CheckOptions(against=train)).issues if f.rule == "leak.near"]
    assert "near copy of train.jsonl line 1's: inputs 0.83 alike" in leak.message
    a, b = Fingerprints(), Fingerprints()
    for r in json.loads(f"[{','.join(test.read_text().splitlines())}]"):
        a.add(r["input"], r["output"])
    for r in json.loads(f"[{','.join(train.read_text().splitlines())}]"):
        b.add(r["input"], r["output"])
    m = cross_matches(a, b)
    assert m.near.tolist() == [-1] * 8 + [0] and m.output_similarity[8] == pytest.approx(9 / 11)


def test_without_near_detection_only_exact_copies_and_conflicts(tmp_path):
    fp = Fingerprints(near=False)
    for i, o in (("q", "a"), ("Q?", "a"), ("q", "b"), ("other question", "a")):
        fp.add(i, o)
    g = fp.groups()
    assert [g.kind_of(i) for i in range(4)] == ["", "exact", "conflict", ""] and g.partner.tolist() == [-1, 0, 0, -1]


def test_a_row_linked_only_through_a_later_row_cites_its_group_first():
    """A ~ B and B ~ C but A and C less alike: with the order A, C, B, row C cites A with their own similarity."""
    words = [f"w{k}" for k in range(32)]
    a, b, c = (" ".join(words[:k]) for k in (20, 26, 32))  # 19, 25 and 31 bigrams: A~B 0.76, B~C 0.81, A~C 0.61
    fp = Fingerprints()
    for text in (a, c, b):
        fp.add(text, "the same answer")
    g = fp.groups()
    assert g.near.tolist() == [0, 0, 0] and [g.kind_of(i) for i in range(3)] == ["", "near", "near"]
    assert g.partner.tolist() == [-1, 0, 1]  # B's best earlier match is C (0.81), C's only link is the later B
    assert g.input_similarity[1] == pytest.approx(19 / 31) and g.input_similarity[2] == pytest.approx(25 / 31)


def test_check_says_how_many_rows_share_context():
    assert check(SCHEMAS).summary["shared_context_rows"] == 40  # every row holds its database's column list


def test_symbols_that_change_the_meaning_keep_rows_apart(tmp_path):
    """'x > 5' and 'x < 5' normalised to the same text, so prepare dropped the second as an exact copy."""
    rows = [{"input": "Count the rows where x > 5", "output": "SELECT count(*) FROM t WHERE x > 5"},
            {"input": "Count the rows where x < 5", "output": "SELECT count(*) FROM t WHERE x < 5"},
            {"input": "What is 2+3?", "output": "5"}, {"input": "What is 2*3?", "output": "6"},
            {"input": "how long does a PERMIT take", "output": "About ten weeks."},
            {"input": "How long does a permit take?", "output": "About ten weeks"}]
    card = prepare(jsonl(tmp_path / "d.jsonl", rows), tmp_path / "out", split=(100, 0, 0))
    assert card["kept"] == 5 and card["rejected_by_reason"] == {"dup.exact": 1}  # case and '?' still do not count


def test_rows_with_a_repeated_input_are_compared_with_each_other():
    """A second answer to a question (a conflict) can have its own near copies; they cite it, not the first answer."""
    question = "how do i apply for a building permit in the city of helsingborg"
    first, second = "fill in form a and wait ten weeks", "call the planning office and book a meeting with a planner soon"
    fp = Fingerprints()
    for text, answer in ((question, first), (question, second), (question, second + " please"),
                         (question + " today", second + " again")):
        fp.add(text, answer)
    g = fp.groups()
    assert [g.kind_of(i) for i in range(4)] == ["", "conflict", "near", "near"]
    assert g.partner.tolist() == [-1, 0, 1, 1]  # rows 2 and 3 cite the second answer (row 1), not the first
    assert g.output_similarity[3] == pytest.approx(11 / 12)  # closer to row 1 than to row 2 (11 / 13)
