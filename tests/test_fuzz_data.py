"""Fuzzing `data check` and `data prepare` with generated malformed files (issue 8, part 1).

By default 10,000 inputs in total (8,500 through check, 1,500 through prepare, whose atomic,
fsynced writes make it ~20x slower per input), well inside two minutes on 2 cores.
TUNESMITH_FUZZ_SCALE=10 runs ten times as many. Each input must: raise nothing but DataError
(prepare, when no row is usable), finish within a time bound, and account for every row read
(kept + rejected = read, and the files written say the same).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import string
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.data.check import check
from tunesmith.data.prepare import prepare
from tunesmith.errors import DataError

SCALE = float(os.environ.get("TUNESMITH_FUZZ_SCALE", "1"))
CHECK_EXAMPLES = max(1, int(8_500 * SCALE))
PREPARE_EXAMPLES = max(1, int(1_500 * SCALE))
TIME_BOUND_S = 20  # per input; generous for a loaded 2-core machine, catches hangs

FIELDS = ["input", "output", "question", "answer", "prompt", "response", "completion", "instruction",
          "messages", "conversations", "text", "role", "content", "from", "value", "weight", "system"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
# Rows shaped like the real formats, with any field given any type.
role_values = st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "", "USER"]) | json_values
message = st.fixed_dictionaries({}, optional={"role": role_values, "content": json_values, "weight": json_values,
                                              "from": role_values, "value": json_values})
shaped_rows = st.one_of(
    st.fixed_dictionaries({}, optional={"input": json_values, "output": json_values}),
    st.fixed_dictionaries({}, optional={"instruction": json_values, "input": json_values, "output": json_values}),
    st.fixed_dictionaries({}, optional={"prompt": json_values, "completion": json_values}),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=5) | json_values}),
    st.fixed_dictionaries({"conversations": st.lists(message, max_size=5) | json_values}),
    st.fixed_dictionaries({"text": json_values}),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
)
good_row = st.builds(lambda q, a: {"input": q, "output": a}, st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=60))


def _jsonl(rows: list, cut: int | None) -> bytes:
    text = "\n".join(json.dumps(r, ensure_ascii=False) if not isinstance(r, bytes) else r.decode("latin-1") for r in rows)
    data = text.encode("utf-8", "surrogatepass")
    return data[:cut] if cut is not None else data


@st.composite
def jsonl_files(draw) -> tuple[str, bytes]:
    rows = draw(st.lists(st.one_of(shaped_rows, good_row, json_values), max_size=12))
    cut = draw(st.none() | st.integers(min_value=0, max_value=400))  # truncated JSON
    return ".jsonl", _jsonl(rows, cut)


@st.composite
def json_array_files(draw) -> tuple[str, bytes]:
    value = draw(st.lists(st.one_of(shaped_rows, good_row), max_size=8) | json_values)
    data = json.dumps(value).encode()
    cut = draw(st.none() | st.integers(min_value=0, max_value=len(data)))
    return ".json", data[:cut] if cut is not None else data


@st.composite
def csv_files(draw) -> tuple[str, bytes]:
    sep = draw(st.sampled_from([",", "\t"]))
    header = draw(st.lists(st.sampled_from(FIELDS) | st.text(string.printable, max_size=6), max_size=4))
    rows = draw(st.lists(st.lists(st.text(string.printable + "éü\"", max_size=12), max_size=6), max_size=8))  # ragged
    text = "\n".join(sep.join(r) for r in [header] + rows)
    return (".csv" if sep == "," else ".tsv"), text.encode("utf-8")


@st.composite
def nested_files(draw) -> tuple[str, bytes]:
    depth = draw(st.integers(min_value=100, max_value=100_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return ".jsonl", (opener * depth + "1" + closer * depth).encode()


@st.composite
def mixed_encoding_files(draw) -> tuple[str, bytes]:
    rows = draw(st.lists(good_row, min_size=1, max_size=6))
    parts = []
    for r in rows:
        enc = draw(st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]))
        parts.append(json.dumps(r, ensure_ascii=False).encode(enc, "replace"))
    return draw(st.sampled_from([".jsonl", ".csv", ".json"])), b"\n".join(parts)


@st.composite
def random_byte_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".parquet", ".jsonl.gz", ".txt", ""]))
    return suffix, draw(st.binary(max_size=300))


@st.composite
def gzip_files(draw) -> tuple[str, bytes]:
    suffix, data = draw(jsonl_files())
    return ".jsonl.gz", gzip.compress(data)


malformed_files = st.one_of(jsonl_files(), json_array_files(), csv_files(), nested_files(),
                            mixed_encoding_files(), random_byte_files(), gzip_files())


@contextmanager
def time_bound(seconds: int):
    def _fail(signum, frame):
        raise TimeoutError(f"input took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, _fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _write(tmp: Path, suffix: str, data: bytes, n: list[int]) -> Path:
    n[0] += 1
    path = tmp / f"in{n[0]}{suffix}"
    path.write_bytes(data)
    return path


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip()) if path.exists() else 0


FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=list(HealthCheck))


def test_fuzz_check_never_raises_and_counts_every_row(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-check")
    counter = [0]

    @settings(max_examples=CHECK_EXAMPLES, **FUZZ)
    @given(malformed_files)
    def run(case):
        suffix, data = case
        path = _write(tmp, suffix, data, counter)
        with time_bound(TIME_BOUND_S):
            report = check(path)
        s = report.summary
        accounted = s["usable_rows"] + s["rows_with_errors"] + s["exact_duplicates"] + s["near_duplicates"]
        assert accounted == s["rows_read"], s
        assert all(f.rule and f.severity in ("error", "warning") and f.message for f in report.issues)
        json.dumps(report.to_dict())  # the --json output always serialises
        path.unlink()

    run()
    assert counter[0] >= CHECK_EXAMPLES


def test_fuzz_prepare_accounts_for_every_row(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-prepare")
    counter = [0]

    @settings(max_examples=PREPARE_EXAMPLES, **FUZZ)
    @given(malformed_files)
    def run(case):
        suffix, data = case
        path = _write(tmp, suffix, data, counter)
        out = tmp / f"out{counter[0]}"
        try:
            with time_bound(TIME_BOUND_S):
                card = prepare(path, out)
        except DataError as e:
            assert str(e)  # a clear message, and nothing half-written
            assert not out.exists() or not any(p.suffix == ".tmp" for p in out.iterdir())
            return
        assert card["kept"] + card["rejected"] == card["rows_read"]
        written = sum(_lines(out / f"{name}.jsonl") for name in ("train", "validation", "test"))
        assert written == card["kept"]
        assert _lines(out / "rejected.jsonl") == card["rejected"]
        assert not any(p.name.endswith(".tmp") for p in out.iterdir())

    run()
    assert counter[0] >= PREPARE_EXAMPLES


def test_huge_single_line_is_reported_not_loaded_whole(tmp_path):
    """A 100 MB line without a newline: a clear finding, bounded time, no traceback."""
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"input": "')
        chunk = b"x" * (1 << 20)
        for _ in range(100):
            f.write(chunk)
    with time_bound(120):
        report = check(path)
    assert report.errors >= 1
    assert report.summary["usable_rows"] == 0
