"""Reading data files row by row (JSONL, JSON array, CSV, TSV, Parquet, gzip of those), never all at once.

Every problem becomes a Finding instead of an exception: a row that cannot be read is yielded
with `obj=None` and its finding, so callers can count it, report it and reject it.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from tunesmith.data.rules import Finding, finding

MAX_ROW_BYTES = 8 << 20  # no training row is this large; bigger lines are reported, not loaded
SNIFF_BYTES = 8192
KINDS = ("jsonl", "json", "csv", "tsv", "parquet")
SUFFIX_KIND = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".parquet": "parquet", ".pq": "parquet"}
_SURROGATE = re.compile("[\udc80-\udcff]")
_BOM = b"\xef\xbb\xbf"


@dataclass
class RawRow:
    """One row as read: `obj` is a dict, or None when the row could not be read (then `problem` says why).

    `line` is the 1-based line (JSONL, JSON, CSV) or row number (Parquet); line 0 is the file itself.
    """

    line: int
    obj: dict | None
    problem: Finding | None = None


def file_kind(path: Path) -> tuple[str | None, bool]:
    """(kind, gzipped) from the file name; kind None when the suffix is not one we know."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] in (".gz", ".gzip")
    if gz:
        suffixes = suffixes[:-1]
    return (SUFFIX_KIND.get(suffixes[-1]) if suffixes else None), gz


def iter_raw(path: str | Path) -> Iterator[RawRow]:
    """Yield every row of `path`; file-level problems come as RawRow(0, None, finding)."""
    path = Path(path)
    kind, gz = file_kind(path)
    try:
        head = _peek(path, gz)
    except (OSError, EOFError, zlib.error) as e:
        yield _file_problem("file.unreadable", f"{path} cannot be read ({_reason(e)})")
        return
    if not head.strip():
        yield _file_problem("file.empty", f"{path} is empty")
        return
    if head.startswith(b"PAR1"):
        kind = "parquet"
    elif b"\x00" in head:
        yield _file_problem("file.binary", f"{path} looks binary (it contains NUL bytes), not a data file")
        return
    kind = kind or _sniff(head)
    if kind is None:
        yield _file_problem("file.type", f"{path}: cannot tell the format from the name or the content")
        return
    try:
        yield from _READERS[kind](path, gz, head)
    except (OSError, EOFError, zlib.error) as e:  # e.g. a truncated gzip stream half-way through
        yield _file_problem("file.unreadable", f"{path} could not be read to the end ({_reason(e)})")


def _file_problem(rule: str, what: str) -> RawRow:
    return RawRow(0, None, finding(0, "", rule, what))


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _open(path: Path, gz: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _peek(path: Path, gz: bool) -> bytes:
    if path.is_dir():
        raise IsADirectoryError(21, "it is a folder, not a file")
    with _open(path, gz) as f:
        head = f.read(SNIFF_BYTES)
    return head[len(_BOM):] if head.startswith(_BOM) else head


def _sniff(head: bytes) -> str | None:
    first = head.lstrip()[:1]
    if first == b"[":
        return "json"
    if first == b"{":
        return "jsonl"
    return None


# ------------------------------------------------------------------ JSON Lines


def _read_jsonl(path: Path, gz: bool, head: bytes) -> Iterator[RawRow]:
    if head.lstrip().startswith(b"["):  # a JSON array saved as .jsonl
        yield from _read_json(path, gz, head)
        return
    with _open(path, gz) as f:
        yield from _jsonl_rows(f, json_file=False, path=path)


def _jsonl_rows(f: IO[bytes], *, json_file: bool, path: Path) -> Iterator[RawRow]:
    line_no = 0
    while raw := f.readline(MAX_ROW_BYTES):
        line_no += 1
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        if len(raw) == MAX_ROW_BYTES and not raw.endswith(b"\n"):
            _skip_rest_of_line(f)
            yield RawRow(line_no, None, finding(line_no, "", "line.too_long", f"line is over {MAX_ROW_BYTES >> 20} MB"))
            continue
        if not raw.strip():
            continue
        row = _parse_json_line(raw, line_no)
        if line_no == 1 and json_file and row.problem is not None and row.problem.rule == "json.invalid":
            yield _object_file(path)  # a pretty-printed object: say so once instead of one error per line
            return
        yield row


def _skip_rest_of_line(f: IO[bytes]) -> None:
    while chunk := f.readline(MAX_ROW_BYTES):
        if chunk.endswith(b"\n"):
            return


def _parse_json_line(raw: bytes, line_no: int) -> RawRow:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return RawRow(line_no, None, finding(line_no, "", "utf8.invalid", f"byte {e.start + 1} is not valid UTF-8"))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return RawRow(line_no, None, finding(line_no, "", "json.invalid", f"not valid JSON ({e.msg} at column {e.colno})"))
    except RecursionError:
        return RawRow(line_no, None, finding(line_no, "", "json.invalid", "JSON nested too deeply"))
    return _object_row(obj, line_no)


def _object_row(obj: Any, line_no: int) -> RawRow:
    if isinstance(obj, dict):
        return RawRow(line_no, obj)
    what = f"row is a JSON {type(obj).__name__.replace('str', 'string').replace('NoneType', 'null')}, not an object"
    return RawRow(line_no, None, finding(line_no, "", "json.not_object", what))


# ------------------------------------------------------------------ JSON array


def _read_json(path: Path, gz: bool, head: bytes) -> Iterator[RawRow]:
    if not head.lstrip().startswith(b"["):  # JSON Lines saved as .json, or an object
        with _open(path, gz) as f:
            yield from _lone_object(_jsonl_rows(f, json_file=True, path=path), path)
        return
    with _open(path, gz) as f:
        yield from _ArrayReader(f).rows()


def _holds_rows(obj: dict) -> bool:
    return any(isinstance(v, list) and v and isinstance(v[0], dict)
               for k, v in obj.items() if k not in ("messages", "conversations"))


def _lone_object(rows: Iterator[RawRow], path: Path) -> Iterator[RawRow]:
    """A .json file whose only row holds a list of rows under some key: an object, not an array."""
    first = next(rows, None)
    if first is None:
        return
    second = next(rows, None)
    if second is None and first.obj is not None and _holds_rows(first.obj):
        keys = ", ".join(repr(k) for k in list(first.obj)[:5])
        what = f"{path.name} holds one JSON object (keys {keys}), not an array of rows"
        yield RawRow(0, None, finding(0, "", "json.not_array", what))
        return
    yield first
    if second is not None:
        yield second
        yield from rows


def _object_file(path: Path) -> RawRow:
    what = f"{path.name} holds one JSON object, not an array of rows (or it is not valid JSON)"
    return RawRow(0, None, finding(0, "", "json.not_array", what))


class _ArrayReader:
    """Stream the elements of a top-level JSON array, with the line each one starts on."""

    CHUNK = 1 << 20

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False

    def rows(self) -> Iterator[RawRow]:
        try:
            yield from self._elements()
        except UnicodeDecodeError:
            yield RawRow(0, None, finding(self.line, "", "utf8.invalid", f"invalid UTF-8 near line {self.line}"))

    def _elements(self) -> Iterator[RawRow]:
        if self.buf == "" and not self._fill():
            return
        self._skip_ws()
        self._advance(1)  # the '[' (the sniffer saw it)
        expect_value = True
        while True:
            self._skip_ws()
            if not self._ensure(1):
                yield self._bad("the array is not closed with ']'")
                return
            ch = self.buf[self.pos]
            if ch == "]":
                return
            if ch == "," and not expect_value:
                self._advance(1)
                expect_value = True
                continue
            row = self._element()
            yield row
            if row.obj is None and row.problem and row.problem.rule in ("json.invalid", "line.too_long"):
                return  # cannot find the next element reliably
            expect_value = False

    def _element(self) -> RawRow:
        line = self.line
        decoder = json.JSONDecoder()
        while True:
            try:
                obj, end = decoder.raw_decode(self.buf, self.pos)
                if end == len(self.buf) and not self.eof and self._fill():
                    continue  # a number may go on in the next chunk
                self._advance(end - self.pos)
                return _object_row(obj, line)
            except json.JSONDecodeError as e:
                if len(self.buf) - self.pos > MAX_ROW_BYTES:
                    return RawRow(line, None, finding(line, "", "line.too_long", f"row is over {MAX_ROW_BYTES >> 20} MB"))
                if not self._fill():
                    return RawRow(line, None, finding(line, "", "json.invalid", f"not valid JSON ({e.msg} at line {e.lineno})"))
            except RecursionError:
                return RawRow(line, None, finding(line, "", "json.invalid", "JSON nested too deeply"))

    def _bad(self, what: str) -> RawRow:
        return RawRow(self.line, None, finding(self.line, "", "json.invalid", what))

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.CHUNK)
        self.eof = not data
        if self.pos > len(self.buf) // 2:  # drop what is consumed so memory stays bounded
            self.buf, self.pos = self.buf[self.pos:], 0
        self.buf += self.decoder.decode(data, final=self.eof)
        return bool(data)

    def _ensure(self, n: int) -> bool:
        while len(self.buf) - self.pos < n:
            if not self._fill():
                return False
        return True

    def _skip_ws(self) -> None:
        while True:
            start = self.pos
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            self.line += self.buf.count("\n", start, self.pos)
            if self.pos < len(self.buf) or not self._fill():
                return

    def _advance(self, n: int) -> None:
        self.line += self.buf.count("\n", self.pos, self.pos + n)
        self.pos += n


# ------------------------------------------------------------------ CSV / TSV


def _read_csv(path: Path, gz: bool, head: bytes, delimiter: str = ",") -> Iterator[RawRow]:
    csv.field_size_limit(MAX_ROW_BYTES)
    with _open(path, gz) as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        header, start = _csv_header(reader)
        if header is None:
            yield _file_problem("file.empty", f"{path} has no header row")
            return
        if problem := _header_problem(header):
            yield RawRow(0, None, finding(start, "", "csv.header", problem))
            return
        yield from _csv_records(reader, header)


def _read_tsv(path: Path, gz: bool, head: bytes) -> Iterator[RawRow]:
    return _read_csv(path, gz, head, delimiter="\t")


def _csv_header(reader) -> tuple[list[str] | None, int]:
    for record in reader:
        if any(cell.strip() for cell in record):
            return [cell.strip() for cell in record], reader.line_num
    return None, 0


def _header_problem(header: list[str]) -> str | None:
    if any(_SURROGATE.search(h) for h in header):
        return "the header row is not valid UTF-8"
    if "" in header:
        return f"column {header.index('') + 1} of the header row has no name"
    dup = next((h for h in header if header.count(h) > 1), None)
    return f"column name '{dup}' appears twice in the header row" if dup else None


def _csv_records(reader, header: list[str]) -> Iterator[RawRow]:
    last = reader.line_num
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            line = last + 1
            last = reader.line_num
            yield RawRow(line, None, finding(line, "", "csv.ragged", f"the CSV row cannot be parsed ({e})"))
            continue
        line, last = last + 1, reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            what = f"row has {len(record)} fields, the header has {len(header)}"
            yield RawRow(line, None, finding(line, "", "csv.ragged", what))
        elif any(_SURROGATE.search(cell) for cell in record):
            yield RawRow(line, None, finding(line, "", "utf8.invalid", "the row has bytes that are not valid UTF-8"))
        else:
            yield RawRow(line, dict(zip(header, record)))


# ------------------------------------------------------------------ Parquet


def _read_parquet(path: Path, gz: bool, head: bytes) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    if gz:
        yield _file_problem("file.type", f"{path}: gzip a .parquet file is not supported (Parquet is compressed already)")
        return
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...
        yield _file_problem("file.unreadable", f"{path} is not a valid Parquet file ({str(e)[:200]})")
        return
    line = 0
    try:
        for batch in pf.iter_batches(batch_size=4096):
            for obj in batch.to_pylist():
                line += 1
                yield RawRow(line, obj)
    except Exception as e:
        yield _file_problem("file.unreadable", f"{path}: reading stopped after row {line} ({str(e)[:200]})")


_READERS = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "tsv": _read_tsv, "parquet": _read_parquet}
