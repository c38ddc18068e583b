"""prepare / load_split / splits_for_training: the kept + rejected invariant and leak-free splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.config import DataConfig
from tunesmith.data.prepare import load_split, parse_split, prepare, splits_for_training
from tunesmith.errors import DataError

FAQ = Path(__file__).resolve().parents[1] / "examples" / "support-faq" / "faq.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def pair(i: int, q: str | None = None, a: str | None = None) -> dict:
    return {"input": q or f"question number {i} about topic {i * 7}",
            "output": a or f"answer {i}: the reply for topic {i * 7} is {i * 13} units of something"}


def read(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines() also splits on U+0085 and U+2028 inside JSON strings
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_prepare_counts_and_reasons(tmp_path):
    rows = [pair(i) for i in range(40)]
    rows += [pair(3), pair(5)]  # exact duplicates
    rows += ["{broken json", {"input": "no answer"}, {"input": "q", "output": "   "}]
    rows += [pair(0, a=pair(0)["output"] + " indeed")]  # a near duplicate of row 1
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    card = prepare(src, tmp_path / "out", seed=1, near_duplicates="drop")
    assert card["rows_read"] == 46
    assert card["rejected_by_reason"] == {"dup.exact": 2, "dup.near": 1, "field.empty": 1,
                                          "field.missing": 1, "json.invalid": 1}
    assert card["kept"] == 40 and card["splits"] == {"train": 32, "validation": 4, "test": 4}
    rejected = read(tmp_path / "out" / "rejected.jsonl")
    assert [r["line"] for r in rejected] == [41, 42, 43, 44, 45, 46]
    assert rejected[0]["message"] == "exact duplicate of line 4"
    assert len(load_split(tmp_path / "out" / "train.jsonl")) == 32
    assert (tmp_path / "out" / "data_card.json").is_file()
    kept = prepare(src, tmp_path / "kept", seed=1)  # the default keeps the near copy, and says so
    assert kept["kept"] == 41 and kept["kept_with_warnings"] == {"dup.near": 1}
    assert kept["rejected_by_reason"] == {"dup.exact": 2, "field.empty": 1, "field.missing": 1, "json.invalid": 1}


def test_prepare_is_seeded_and_fingerprinted(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [pair(i) for i in range(30)])
    a = prepare(src, tmp_path / "a", seed=7)
    b = prepare(src, tmp_path / "b", seed=7)
    c = prepare(src, tmp_path / "c", seed=8)
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert (tmp_path / "a" / "test.jsonl").read_text() == (tmp_path / "b" / "test.jsonl").read_text()


def test_near_duplicate_groups_never_cross_splits(tmp_path):
    rows = []
    for i in range(30):  # 30 groups of 3 rows: the same question, answers differing in one word
        base = pair(i)
        rows += [base, {**base, "output": base["output"] + " more"}, {**base, "output": base["output"] + " again"}]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    card = prepare(src, tmp_path / "out", near_duplicates="keep", seed=3)
    assert card["kept"] == 90
    where = {}
    for name in ("train", "validation", "test"):
        for row in read(tmp_path / "out" / f"{name}.jsonl"):
            where.setdefault(row["messages"][0]["content"], set()).add(name)
    assert len(where) == 30 and all(len(s) == 1 for s in where.values())


def test_tiny_and_bad_inputs(tmp_path):
    card = prepare(write_jsonl(tmp_path / "one.jsonl", [pair(1)]), tmp_path / "o1")
    assert card["splits"] == {"train": 1, "validation": 0, "test": 0}
    with pytest.raises(DataError, match="no usable rows"):
        prepare(write_jsonl(tmp_path / "bad.jsonl", ["nope"]), tmp_path / "o2")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="is empty"):
        prepare(tmp_path / "empty.jsonl", tmp_path / "o3")
    with pytest.raises(DataError, match="split"):
        parse_split("80/30/10")
    assert parse_split("90/10/0") == (90, 10, 0)


def test_splits_for_training_on_the_bundled_example(tmp_path):
    cfg = DataConfig(train=str(FAQ), system="Be brief.")
    s = splits_for_training(cfg, tmp_path / "data", None, 42)
    assert (len(s.train), len(s.validation), len(s.test)) == (403, 50, 50)
    assert s.train[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert len(s.card["fingerprint"]) == 64 and s.dir == tmp_path / "data"
    questions = {name: {r["messages"][1]["content"].lower() for r in rows}
                 for name, rows in (("train", s.train), ("validation", s.validation), ("test", s.test))}
    assert not questions["train"] & questions["test"] and not questions["train"] & questions["validation"]


def test_splits_for_training_with_given_test_and_errors(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [pair(i) for i in range(20)])
    test = write_jsonl(tmp_path / "test.jsonl", [pair(i) for i in range(100, 105)])
    s = splits_for_training(DataConfig(train=str(train), test=str(test)), tmp_path / "run", None, 1)
    assert (len(s.train), len(s.validation), len(s.test)) == (18, 2, 5)
    assert len(load_split(tmp_path / "run" / "test.jsonl")) == 5
    bad = write_jsonl(tmp_path / "bad.jsonl", [pair(1), {"input": "x"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'output' is missing.*data check"):
        splits_for_training(DataConfig(train=str(bad)), tmp_path / "run2", None, 1)
    with pytest.raises(DataError, match="not set"):
        splits_for_training(DataConfig(), tmp_path / "run3", None, 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.builds(lambda q, a: {"input": q, "output": a}, st.sampled_from(["a b c", "x y z", "q"]), st.text(max_size=12)),
    st.text(max_size=20),
    st.builds(lambda v: {"input": v}, st.integers()),
), max_size=25), st.integers(0, 5))
def test_kept_plus_rejected_is_rows_read(tmp_path, rows, seed):
    src = tmp_path / f"p{seed}.jsonl"
    src.write_text("".join((json.dumps(r) if isinstance(r, dict) else r.replace("\n", " ")) + "\n" for r in rows))
    try:
        card = prepare(src, tmp_path / f"out{seed}", seed=seed)
    except DataError:
        return  # nothing usable: reported, not written
    kept = sum(len(read(tmp_path / f"out{seed}" / f"{n}.jsonl")) for n in ("train", "validation", "test"))
    rejected = len(read(tmp_path / f"out{seed}" / "rejected.jsonl"))
    assert kept == card["kept"] and kept + rejected == card["rows_read"]


def test_prepare_never_replaces_its_input_nor_files_it_did_not_write(tmp_path, monkeypatch):
    """Issue 12: `data prepare X/train.jsonl --out X` overwrote the input; a hand-made test.jsonl was replaced."""
    from tunesmith.data import prepare as prep

    mine = tmp_path / "mine"
    mine.mkdir()
    src = write_jsonl(mine / "train.jsonl", [{**pair(i), "id": i} for i in range(20)])  # extra fields, own format
    original = src.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(DataError, match=r"--out .*mine holds the input file \(.*mine/train.jsonl\): "
                                            r"data prepare never replaces it"):
            prepare(src, mine, overwrite=overwrite)
    assert src.read_bytes() == original and sorted(p.name for p in mine.iterdir()) == ["train.jsonl"]
    out = tmp_path / "out"
    out.mkdir()
    write_jsonl(out / "test.jsonl", [pair(99)])  # made by hand
    with pytest.raises(DataError, match=r"did not write \(or that changed since\): test.jsonl .*--overwrite"):
        prepare(src, out)
    assert read(out / "test.jsonl") == [pair(99)]
    prepare(src, out, overwrite=True)  # asked for: the folder is replaced
    prepare(src, out, seed=3)  # its own earlier output: replaced without asking
    assert json.loads((out / "data_card.json").read_text())["seed"] == 3
    write_jsonl(out / "test.jsonl", [pair(98)])  # hand-edited since
    with pytest.raises(DataError, match=r"changed since\): test.jsonl"):
        prepare(src, out)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(DataError, match=r"--out \. is the current folder"):
        prepare(src, Path("."), overwrite=True)
    # the new splits appear in one step: a failure while writing them leaves the earlier output whole
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(prep, "_sums", lambda folder: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError, match="disk gone"):
        prepare(src, out, overwrite=True, seed=4)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out", "work"]  # no temp folder left beside
