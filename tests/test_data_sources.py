"""The readers keep every row and throw none away wrongly (issue 12): CSV resync, duplicate keys,
BOMs and UTF-16/32, a bad element inside a .json array, and NaN in rows and in what is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.check import check
from tunesmith.data.formats import read_examples
from tunesmith.data.prepare import prepare
from tunesmith.data.sources import MAX_ROW_BYTES

GOOD = {"input": "How long does a permit take?", "output": "About ten weeks for a simple case."}


def issues(path: Path) -> list[tuple[int, str]]:
    return [(f.line, f.rule) for f in check(path).issues]


def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity, as every other JSON parser does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_csv_field_over_the_limit_is_one_error_and_the_next_rows_read_correctly(tmp_path):
    path = tmp_path / "big.csv"
    inside = "inside,the field\n" * 4  # would be two-field rows if the reader lost its place
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("input,output\nq1,a1\n")
        f.write('q2,"' + "x" * (MAX_ROW_BYTES + 10) + "\n" + inside + 'end of it"\n')
        f.write("q3,a3\n")
    result = read_examples(path)
    assert [(f.line, f.rule) for f in result.findings] == [(3, "line.too_long")]
    assert [e["messages"][0]["content"] for e in result.examples] == ["q1", "q3"]
    assert [e["line"] for e in result.examples] == [2, 9]
    assert result.rows_read == 3


def test_an_unquoted_csv_field_over_the_limit_skips_only_its_line(tmp_path):
    path = tmp_path / "big.tsv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("input\toutput\nq1\t" + "y" * (MAX_ROW_BYTES + 10) + "\nq2\ta2\n")
    result = read_examples(path)
    assert [(f.line, f.rule) for f in result.findings] == [(2, "line.too_long")]
    assert [e["line"] for e in result.examples] == [3]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_duplicate_keys_are_an_error_naming_the_key_and_line(tmp_path, name):
    rows = ['{"input": "q", "output": "right", "output": "wrong"}',
            '{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "x"}]}',
            json.dumps(GOOD)]
    text = "\n".join(rows) + "\n" if name.endswith(".jsonl") else "[\n" + ",\n".join(rows) + "\n]\n"
    (tmp_path / name).write_text(text, encoding="utf-8")
    report = check(tmp_path / name)
    first = 1 if name.endswith(".jsonl") else 2
    assert [(f.line, f.rule) for f in report.issues] == [(first, "json.duplicate_key"), (first + 1, "json.duplicate_key")]
    assert "'output'" in report.issues[0].message and "'content'" in report.issues[1].message
    assert report.summary["usable_rows"] == 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv"])
def test_files_with_a_byte_order_mark_are_read(tmp_path, encoding, name):
    rows = [{"input": "Hur lång tid tar ett bygglov?", "output": "Ungefär tio veckor."}, GOOD]
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif name.endswith(".json"):
        text = json.dumps(rows, ensure_ascii=False, indent=2)
    else:
        text = "input,output\n" + "".join(f'"{r["input"]}","{r["output"]}"\n' for r in rows)
    bom = {"utf-16-le": "\ufeff", "utf-16-be": "\ufeff"}.get(encoding, "")  # the -le/-be codecs write no BOM
    (tmp_path / name).write_bytes((bom + text).encode(encoding))
    result = read_examples(tmp_path / name)
    assert result.findings == []
    assert [e["messages"][0]["content"] for e in result.examples] == [r["input"] for r in rows]


def test_utf16_without_a_bom_is_an_encoding_error_with_an_iconv_hint(tmp_path):
    (tmp_path / "d.jsonl").write_bytes((json.dumps(GOOD) + "\n").encode("utf-16-le"))
    report = check(tmp_path / "d.jsonl")
    assert [f.rule for f in report.issues] == ["file.encoding"]
    assert "UTF-16LE" in report.issues[0].message and "iconv -f UTF-16LE -t UTF-8" in report.issues[0].message


def test_a_bad_element_of_a_json_array_is_reported_and_the_rest_is_checked(tmp_path):
    text = ("[\n"
            '  {"input": "q1", "output": "a1"},\n'
            '  {"input": "q2" "output": "missing comma"},\n'  # line 3: balanced but not JSON
            '  {"input": "q3", "output": "a3"},\n'
            '  {"input": "cut short", "output": \n'  # line 5: never closed; the next element starts
            '  {"input": "q6", "output": "a6 {not a brace problem}"},\n'
            "  [1, 2],\n"
            '  {"input": "q8", "output": "a8"}\n'
            "]\n")
    (tmp_path / "d.json").write_text(text, encoding="utf-8")
    result = read_examples(tmp_path / "d.json")
    assert [(f.line, f.rule) for f in result.findings] == [(3, "json.invalid"), (5, "json.invalid"),
                                                           (7, "json.not_object")]
    assert [e["line"] for e in result.examples] == [2, 4, 6, 8]
    assert result.rows_read == 7


def test_bad_bytes_in_one_json_array_element_do_not_stop_the_rest(tmp_path):
    data = (b'[\n{"input": "caf\xe9", "output": "x"},\n' + json.dumps(GOOD).encode() + b"\n]\n")
    (tmp_path / "d.json").write_bytes(data)
    result = read_examples(tmp_path / "d.json")
    assert [(f.line, f.rule) for f in result.findings] == [(2, "utf8.invalid")]
    assert [e["line"] for e in result.examples] == [3]


def test_a_huge_json_array_element_is_skipped_and_the_rest_is_checked(tmp_path):
    path = tmp_path / "d.json"
    with open(path, "wb") as f:
        f.write(b'[{"input": "q", "output": "' + b"x" * (MAX_ROW_BYTES + 10) + b'"},\n')
        f.write(json.dumps(GOOD).encode() + b"]\n")
    result = read_examples(path)
    assert [(f.line, f.rule) for f in result.findings] == [(1, "line.too_long")]
    assert [e["line"] for e in result.examples] == [2]


def test_nan_in_a_row_is_a_finding_and_never_written_into_a_file(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"input": "q", "output": NaN}\n'
                   '{"input": "q2", "output": "a2", "score": Infinity}\n'
                   '{"input": "q3", "output": "a3", "meta": {"w": [1, -Infinity]}}\n'
                   '{"input": "NaN and Infinity in text are fine", "output": "a4"}\n', encoding="utf-8")
    report = check(src)
    assert [(f.line, f.field, f.rule) for f in report.issues] == [
        (1, "output", "field.type"), (1, "output", "json.non_finite"),
        (2, "score", "json.non_finite"), (3, "meta.w[1]", "json.non_finite")]
    assert report.summary["usable_rows"] == 3  # a number nobody trains on is no reason to drop the row
    card = prepare(src, tmp_path / "out", split="100/0/0")
    assert card["rejected"] == 1
    rejected = [strict_loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert rejected[0]["source"] == {"input": "q", "output": "NaN"}  # kept, as text: nothing lost


def test_every_json_writer_writes_strict_json(tmp_path):
    from tunesmith.io import atomic_write_json, atomic_write_jsonl

    row = {"loss": float("nan"), "best": [float("inf"), -float("inf"), 1.5], "ok": None}
    atomic_write_json(tmp_path / "a.json", row)
    atomic_write_jsonl(tmp_path / "a.jsonl", [row, {"x": 1}])
    expected = {"loss": "NaN", "best": ["Infinity", "-Infinity", 1.5], "ok": None}
    assert strict_loads((tmp_path / "a.json").read_text()) == expected
    assert [strict_loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()] == [expected, {"x": 1}]


def test_half_a_surrogate_pair_is_an_error_for_its_field_and_prepare_keeps_it_in_rejected(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"input": "broken \\ud800 escape", "output": "a"}\n'
                   '{"input": "an emoji \\ud83d\\ude00 is a whole pair", "output": "b"}\n', encoding="utf-8")
    assert [(f.line, f.field, f.rule) for f in check(src).issues] == [(1, "input", "text.invalid")]
    prepare(src, tmp_path / "out", split="100/0/0")  # used to crash writing the fingerprint
    rejected = strict_loads((tmp_path / "out" / "rejected.jsonl").read_text().strip())
    assert rejected["source"]["input"] == "broken \ud800 escape"  # written as the same JSON escape


def test_every_rule_is_in_the_documented_table():
    from tunesmith.data.rules import RULES

    docs = (Path(__file__).resolve().parents[1] / "docs" / "data-formats.md").read_text(encoding="utf-8")
    assert [rule for rule in RULES if f"`{rule}`" not in docs] == []


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_a_json_arrays_rows_do_not_depend_on_where_reading_chunks_end(tmp_path, monkeypatch, chunk):
    from tunesmith.data import sources

    pieces = ['{"input": "q", "output": "a"}', '{"input": "q" "output": "x"}', '{"input": "cut", "output": ',
              "[1, 2]", '{"a": "b\\\\", "c": "\\"q\\""}', '{"a": 1, "a": 2}', '{"n": NaN}', "",
              '{\n  "input": "pretty",\n  "output": "printed"\n}', "}", '{"x": [}', '{"e": "\\u00e9t\u00e9 \U0001F600"}']
    texts = ["[" + sep.join(pieces[i:] + pieces[:i]) + end
             for i, (sep, end) in enumerate([(",\n  ", "\n]"), (",", "]"), ("\n,", ""), (",\n", ",]")] * 3)]

    def rows(path):
        return [(r.line, r.obj, r.problem and r.problem.rule, [n.field for n in r.notes]) for r in sources.iter_raw(path)]

    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.json"
        path.write_text(text, encoding="utf-8")
        expected = rows(path)
        monkeypatch.setattr(sources._ArrayReader, "CHUNK", chunk)
        assert rows(path) == expected, text
        monkeypatch.undo()
