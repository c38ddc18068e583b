"""data check: each rule has a fixture that triggers it and one that does not; bad files never raise."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.check import CheckOptions, check
from tunesmith.data.formats import read_examples
from tunesmith.data.rules import RULES

GOOD = {"input": "How long does a permit take?", "output": "About ten weeks for a simple case."}
PROPERTY_EXAMPLES = int(os.environ.get("TUNESMITH_HYPOTHESIS_EXAMPLES", "150"))


def jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def rules_of(path: Path, **opts) -> set[str]:
    return {f.rule for f in check(path, CheckOptions(**opts)).issues}


def chat(*turns, **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def row(i: int) -> dict:
    return {"input": f"question {i} about the topic number {i}", "output": f"the answer {i} is {i * 37} units in all"}


# rule -> (rows that trigger it, rows that do not); each list is written as JSONL
JSONL_CASES = {
    "json.invalid": (['{"input": "a", "output": '], [GOOD]),
    "json.not_object": (['["a", "b"]'], [GOOD]),
    "field.missing": ([GOOD, {"input": "q"}], [GOOD]),
    "field.empty": ([{"input": "q", "output": "  "}], [GOOD]),
    "field.type": ([{"input": "q", "output": 42}], [GOOD]),
    "role.unknown": ([chat(("user", "hi"), ("robot", "hello"))], [chat(("user", "hi"), ("assistant", "hello"))]),
    "role.order": ([chat(("assistant", "hello"), ("user", "hi"), ("assistant", "x"))],
                   [chat(("system", "s"), ("user", "hi"), ("assistant", "hello"))]),
    "turn.no_assistant": ([chat(("user", "hi"))], [chat(("user", "hi"), ("assistant", "hello"))]),
    "turn.ends_with_user": ([chat(("user", "hi"), ("assistant", "hello"), ("user", "bye"))],
                            [chat(("user", "hi"), ("assistant", "hello"))]),
    "dup.exact": ([GOOD, {"input": "how long does a PERMIT take", "output": GOOD["output"]}], [GOOD, row(1)]),
    "dup.near": ([row(1), {**row(1), "output": row(1)["output"] + " exactly"}, row(2)], [row(1), row(2), row(3)]),
    "dup.conflict": ([GOOD, {**GOOD, "output": "It depends on the municipality."}], [GOOD, row(1)]),
    "dup.near_input": ([row(1), {"input": row(1)["input"] + " please", "output": "ask the office"}], [row(1), row(2)]),
    "pii.email": ([{"input": "q", "output": "write to jane.doe@example.com"}], [{"input": "q", "output": "write to us at the office"}]),
    "pii.phone": ([{"input": "q", "output": "call 0771-567 567"}], [{"input": "q", "output": "it costs 25,000-50,000 SEK"}]),
    "pii.card": ([{"input": "q", "output": "card 4111 1111 1111 1111"}], [{"input": "q", "output": "id 4111 1111 1111 1112"}]),
    "file.empty": ([], [GOOD]),
}


@pytest.mark.parametrize("rule", sorted(JSONL_CASES))
def test_rule_triggers_and_does_not(tmp_path, rule):
    bad, good = JSONL_CASES[rule]
    assert rule in rules_of(jsonl(tmp_path, bad, "bad.jsonl"))
    assert rule not in rules_of(jsonl(tmp_path, good, "good.jsonl"))


def test_weight_must_be_0_or_1_and_all_weight_0_is_no_assistant(tmp_path):
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0.5}]}
    zero = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]}
    report = check(jsonl(tmp_path, [bad, zero]))
    assert [(f.line, f.field, f.rule) for f in report.issues] == [
        (1, "messages[1].weight", "field.type"), (2, "", "turn.no_assistant")]


def test_utf8_csv_ragged_and_header(tmp_path):
    (tmp_path / "u.jsonl").write_bytes(b'{"input": "caf\xe9", "output": "x"}\n' + json.dumps(GOOD).encode() + b"\n")
    assert [(f.line, f.rule) for f in check(tmp_path / "u.jsonl").issues] == [(1, "utf8.invalid")]
    (tmp_path / "r.csv").write_text('question,answer\n"What, exactly?",Yes\nNo header here,a,b\n"multi\nline",ok\n')
    report = check(tmp_path / "r.csv")
    assert [(f.line, f.rule) for f in report.issues] == [(3, "csv.ragged")]
    assert report.summary["usable_rows"] == 2 and report.summary["format"] == "input-output"
    (tmp_path / "ok.tsv").write_text("prompt\tcompletion\nhi\tthere\n")
    assert check(tmp_path / "ok.tsv").issues == []
    (tmp_path / "h.csv").write_text("question,,answer\nq,x,a\n")
    assert rules_of(tmp_path / "h.csv") == {"csv.header"}
    (tmp_path / "noheader.csv").write_text("What is X?,X is a thing\nWhat is Y?,Y is another\n")
    issues = check(tmp_path / "noheader.csv").issues
    assert [f.rule for f in issues] == ["format.unknown"] and "header row" in issues[0].message


def test_bad_files_are_reported_not_raised(tmp_path):
    (tmp_path / "bin.jsonl").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "obj.json").write_text(json.dumps({"data": [GOOD, GOOD]}, indent=2))
    (tmp_path / "obj1.json").write_text(json.dumps({"data": [GOOD]}))
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "x.parquet").write_bytes(b"PAR1 nonsense")
    (tmp_path / "blank.csv").write_text("\n\n")
    (tmp_path / "what.txt").write_text("hello")
    expected = {"bin.jsonl": "file.binary", "obj.json": "json.not_array", "obj1.json": "json.not_array",
                "dir.jsonl": "file.unreadable", "bad.gz": "file.unreadable", "x.parquet": "file.unreadable",
                "blank.csv": "file.empty", "what.txt": "file.type"}
    for name, rule in expected.items():
        report = check(tmp_path / name)
        assert [f.rule for f in report.issues] == [rule], name
        assert report.errors == 1 and report.summary["verdict"]["level"] == "fix-data"


def test_huge_single_line_is_one_finding(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"input": "q", "output": "' + b"x" * (9 << 20) + b'"}\n')
        f.write(json.dumps(GOOD).encode() + b"\n")
    report = check(path)
    assert [(f.line, f.rule) for f in report.issues] == [(1, "line.too_long")]
    assert report.summary["rows_read"] == 2 and report.summary["usable_rows"] == 1


def test_every_format_and_container(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "alpaca": {"instruction": "Translate", "input": "hej", "output": "hello"},
        "sharegpt": {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"},
                                       {"from": "gpt", "value": "hello"}]},
        "prompt-completion": {"prompt": "2+2=", "completion": "4"},
        "messages": chat(("user", "hi"), ("assistant", "hello")),
        "text": {"text": "plain text for continued pre-training"},
    }
    for fmt, r in rows.items():
        result = read_examples(jsonl(tmp_path, [r], f"{fmt}.jsonl"))
        assert result.format == fmt and len(result.examples) == 1 and result.findings == []
    assert read_examples(tmp_path / "alpaca.jsonl").examples[0]["messages"][0]["content"] == "Translate\n\nhej"
    (tmp_path / "arr.json").write_text(json.dumps([GOOD, row(1)], indent=2))
    assert [e["line"] for e in read_examples(tmp_path / "arr.json").examples] == [2, 6]
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as f:
        f.write(json.dumps(GOOD) + "\n")
    assert len(read_examples(tmp_path / "z.jsonl.gz").examples) == 1
    pq.write_table(pa.Table.from_pylist([GOOD, row(2)]), tmp_path / "t.parquet")
    assert len(read_examples(tmp_path / "t.parquet").examples) == 2
    mapped = read_examples(jsonl(tmp_path, [{"q": "a", "a": "b"}], "m.jsonl"), mapping="input=q,output=a", system="S")
    assert mapped.examples[0]["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                                              {"role": "assistant", "content": "b"}]
    forced = read_examples(tmp_path / "alpaca.jsonl", format="completion")
    assert forced.examples == [] and forced.findings[0].rule == "field.missing"


def test_token_rules_with_the_tokenizer(tmp_path, tokenizer):
    rows = [{"input": "Say hi.", "output": "Hi"}, {"input": "Tell me more about permits.", "output": "word " * 300},
            {"input": "Another question?", "output": "A normal answer of some length."}]
    report = check(jsonl(tmp_path, rows), CheckOptions(tokenizer=tokenizer, max_length=200))
    assert [(f.line, f.rule) for f in report.issues] == [
        (1, "answer.too_short"), (2, "answer.too_long"), (2, "length.over_context")]
    t = report.summary["tokens"]
    assert (t["rows"], t["rows_truncated"], t["max_length"]) == (3, 1, 200)
    assert t["min"] < t["median"] < t["max"] and t["tokens_cut"] == t["max"] - 200


LONG = {"input": "please explain in detail how the building permit process works for a small extension",
        "output": "you apply to the municipal building committee with drawings and a site plan and wait about ten weeks"}


def test_against_finds_leaks(tmp_path):
    train = jsonl(tmp_path, [row(1), row(2), LONG, GOOD], "train.jsonl")
    near = {"input": LONG["input"] + " please", "output": LONG["output"] + " or so"}
    test = jsonl(tmp_path, [row(2), near, {**GOOD, "output": "other"}], "test.jsonl")
    report = check(train, CheckOptions(against=test))
    assert [(f.line, f.rule) for f in report.issues] == [(2, "leak.exact"), (3, "leak.near"), (4, "leak.exact")]
    assert report.summary["against"]["exact"] == 2 and report.errors == 2
    assert "leak.exact" not in rules_of(jsonl(tmp_path, [row(7)], "clean.jsonl"), against=test)


def test_summary_json_shape_and_all_rules_known(tmp_path):
    report = check(jsonl(tmp_path, [GOOD, "oops"]))
    d = report.to_dict()
    assert set(d) == {"summary", "issues"} and set(d["issues"][0]) == {"line", "field", "rule", "severity", "message"}
    assert d["summary"]["by_rule"] == {"json.invalid": {"severity": "error", "count": 1}}
    assert all(f.rule in RULES for f in report.issues)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.sampled_from(["a.jsonl", "a.json", "a.csv", "a.tsv", "a.parquet", "a.jsonl.gz"]))
def test_random_bytes_never_raise(tmp_path, data, name):
    path = tmp_path / name
    path.write_bytes(data)
    report = check(path)
    assert report.summary["rows_read"] >= 0 and all(f.rule in RULES for f in report.issues)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["input", "output", "messages", "role", "content", "text", "weight",
                                                "conversations", "from", "value", "instruction", "x"]), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(json_values, max_size=6), st.sampled_from(["jsonl", "json"]))
def test_random_json_never_raises(tmp_path, values, kind):
    path = tmp_path / f"r.{kind}"
    text = "\n".join(json.dumps(v) for v in values) if kind == "jsonl" else json.dumps(values)
    path.write_text(text)
    report = check(path)
    s = report.summary  # every row read is either unusable (errors), usable, or a duplicate
    assert s["rows_with_errors"] + s["usable_rows"] + s["exact_duplicates"] + s["near_duplicates"] == s["rows_read"]
    assert all(f.rule in RULES for f in report.issues)
