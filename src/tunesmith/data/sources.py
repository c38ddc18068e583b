"""Reading data files row by row (JSONL, JSON array, CSV, TSV, Parquet, gzip of those), never all at once.

Every problem becomes a Finding instead of an exception: a row that cannot be read is yielded
with `obj=None` and its finding, so callers can count it, report it and reject it; one bad row
never stops the rows after it from being read. Text is UTF-8 (a BOM is allowed), or UTF-16 /
UTF-32 with a BOM, which is read as UTF-8. JSON is read strictly: a key twice in one object is
an error (json would keep the last value silently); NaN and Infinity, which are not JSON but
which Python writes, are read and reported.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from tunesmith.data.rules import Finding, finding

MAX_ROW_BYTES = 8 << 20  # no training row is this large; bigger lines are reported, not loaded
SNIFF_BYTES = 8192
KINDS = ("jsonl", "json", "csv", "tsv", "parquet")
SUFFIX_KIND = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
               ".parquet": "parquet", ".pq": "parquet"}
_SURROGATE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as decoded with surrogateescape
_BOM = b"\xef\xbb\xbf"
# Longest first: the UTF-32LE mark begins with the UTF-16LE one. The codecs read the mark themselves.
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
              (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))
UNDECODABLE = "tunesmith.undecodable"


def _undecodable(e: UnicodeError) -> tuple[str, int]:
    """Codec error handler: each bad UTF-16/32 code unit becomes a lone surrogate, which is written out
    as bytes that are not UTF-8, so the row that holds it gets `utf8.invalid` instead of changed text."""
    if not isinstance(e, UnicodeDecodeError):
        raise e
    return "\udcff" * (e.end - e.start), e.end


codecs.register_error(UNDECODABLE, _undecodable)  # a named, stateless handler: registering it twice is harmless


@dataclass
class RawRow:
    """One row as read: `obj` is a dict, or None when the row could not be read (then `problem` says why).

    `line` is the 1-based line (JSONL, JSON, CSV) or row number (Parquet); line 0 is the file itself.
    `notes` are warnings about a row that was read (e.g. a NaN in it): they do not stop the row.
    """

    line: int
    obj: dict | None
    problem: Finding | None = None
    notes: list[Finding] = field(default_factory=list)


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
        yield _binary(path, head)
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


def _binary(path: Path, head: bytes) -> RawRow:
    """NUL bytes: UTF-16 text without a byte-order mark (say how to convert it), or a binary file."""
    wide = _bomless_utf16(head)
    if wide is None:
        return _file_problem("file.binary", f"{path} looks binary (it contains NUL bytes), not a data file")
    what = (f"{path} looks like {wide} text without a byte-order mark; convert it to UTF-8: "
            f"`iconv -f {wide} -t UTF-8 {path} > {path.stem}.utf8{path.suffix}`")
    return _file_problem("file.encoding", what)


def _bomless_utf16(head: bytes) -> str | None:
    """'UTF-16LE' / 'UTF-16BE' when most ASCII-range text would put a NUL in every other byte."""
    sample = head[: len(head) // 2 * 2]
    if len(sample) < 4:
        return None
    odd_nul, even_nul = sample[1::2].count(0), sample[0::2].count(0)
    half = len(sample) // 2
    if odd_nul > 0.9 * half and even_nul < 0.1 * half:
        return "UTF-16LE"
    if even_nul > 0.9 * half and odd_nul < 0.1 * half:
        return "UTF-16BE"
    return None


def _open(path: Path, gz: bool) -> IO[bytes]:
    """The file's bytes (decompressed), as UTF-8 when a byte-order mark says UTF-16 or UTF-32."""
    f = gzip.open(path, "rb") if gz else open(path, "rb")
    try:
        mark = f.read(4)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    encoding = next((enc for bom, enc in _WIDE_BOMS if mark.startswith(bom)), None)
    return f if encoding is None else io.BufferedReader(_AsUtf8(f, encoding))


class _AsUtf8(io.RawIOBase):
    """A UTF-16 or UTF-32 byte stream read as UTF-8 bytes (its BOM dropped), so every reader sees UTF-8."""

    def __init__(self, f: IO[bytes], encoding: str):
        self.f = f
        self.decoder = codecs.getincrementaldecoder(encoding)(UNDECODABLE)
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.pending:
            data = self.f.read(1 << 16)
            # surrogatepass: the handler's lone surrogates come out as (invalid) bytes, not an exception
            self.pending = self.decoder.decode(data, final=not data).encode("utf-8", "surrogatepass")
            if not data:
                break
        n = min(len(b), len(self.pending))
        b[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


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


# ------------------------------------------------------------------ strict JSON


class _DuplicateKey(ValueError):
    """A key twice in one JSON object; `json` alone would keep the last value and say nothing."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
_PLAIN = json.JSONDecoder()  # only to find where an element with a repeated key ends


def _json_row(obj: Any, line: int, text: str) -> RawRow:
    """A decoded row, with a warning for each NaN or Infinity in it (`text` is its JSON, for a cheap pre-check)."""
    row = _object_row(obj, line)
    if row.obj is not None and ("NaN" in text or "Infinity" in text):
        for where in _non_finite(row.obj, ""):
            what = f"'{where}' is NaN or Infinity, which is not JSON (other tools refuse the file)"
            row.notes.append(finding(line, where, "json.non_finite", what))
    return row


def _non_finite(value: Any, where: str) -> Iterator[str]:
    """Field paths ('meta.scores[2]') of the NaN / Infinity numbers inside `value`."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _non_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, f"{where}[{i}]")


def _duplicate(key: str, line: int) -> RawRow:
    what = f"key '{key}' appears twice in one object of this row (a JSON reader keeps either value, or refuses)"
    return RawRow(line, None, finding(line, key, "json.duplicate_key", what))


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
        obj = _DECODER.decode(text)
    except _DuplicateKey as e:
        return _duplicate(e.key, line_no)
    except json.JSONDecodeError as e:
        return RawRow(line_no, None, finding(line_no, "", "json.invalid", f"not valid JSON ({e.msg} at column {e.colno})"))
    except RecursionError:
        return RawRow(line_no, None, finding(line_no, "", "json.invalid", "JSON nested too deeply"))
    return _json_row(obj, line_no, text)


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


# Where a scan of a bad element must look: string quotes and escapes, brackets, commas, line ends.
_STRUCTURE = re.compile(r'["\\{}\[\],\n]')


@dataclass
class _Scan:
    """A resumable scan of a bad element's structure, to find where it ends.

    Positions are absolute (characters since the start of the file) because the buffer drops what
    is consumed; `at` is how far the scan got. `end`: the ',' or ']' after the element at depth 0.
    `cut`: the first later line whose first character is the element's opening bracket (`opener`)
    at its `column`, where a new element begins when this one was cut short (never closed).
    """

    column: int
    opener: str
    at: int
    depth: int = 0
    in_string: bool = False
    end: int | None = None
    cut: int | None = None


class _ArrayReader:
    """Stream the elements of a top-level JSON array, with the line each one starts on.

    A bad element (not JSON, over the size limit, a key twice, bytes that are not UTF-8) becomes
    one finding, and reading goes on with the next element.
    """

    CHUNK = 1 << 20

    def __init__(self, f: IO[bytes]):
        self.f = f
        # surrogateescape: a bad byte becomes a marker the element's row is checked for, not an exception
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")("surrogateescape")
        self.buf = ""
        self.pos = 0
        self.dropped = 0  # characters dropped from the front of buf: absolute position = dropped + index
        self.line = 1
        self.line_start = 0  # absolute position where the current line starts
        self.eof = False

    def rows(self) -> Iterator[RawRow]:
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
            row, after = self._element()
            yield row
            if after == "eof":
                return
            expect_value = after == "value"

    def _element(self) -> tuple[RawRow, str]:
        """The element at pos -> (its row, what follows: 'comma' (a ',' or ']'), 'value' or 'eof')."""
        line, scan, what = self.line, None, "not valid JSON"
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
                if end == len(self.buf) and not self.eof and self._fill():
                    continue  # a number may go on in the next chunk
                return self._decoded(obj, end, line), "comma"
            except _DuplicateKey as e:
                with_dup = self._duplicate_end(e.key, line)
                if with_dup is not None:
                    return with_dup, "comma"
            except json.JSONDecodeError:
                pass
            except RecursionError:
                what = "JSON nested too deeply"
            # Not decodable (yet): scan for the element's end. A complete bad element is skipped;
            # an incomplete one may be a good element that goes on in the next chunk.
            scan = scan or self._new_scan()
            self._scan(scan)
            if scan.end is not None:
                return self._skip_bad(line, scan, what)
            if len(self.buf) - self.pos > MAX_ROW_BYTES:
                if scan.cut is not None:
                    return self._skip_bad(line, scan, what + " (it is never closed)")
                return self._skip_huge(line, scan)
            if not self._fill():
                return self._skip_bad(line, scan, what + " (it is never closed)")

    def _decoded(self, obj: Any, end: int, line: int) -> RawRow:
        text = self.buf[self.pos:end]
        self._advance(end - self.pos)
        if len(text) > MAX_ROW_BYTES:  # as for a line of JSON Lines (characters here, bytes there: close enough)
            return self._too_long(line)
        if _SURROGATE.search(text):
            return RawRow(line, None, finding(line, "", "utf8.invalid", "the row has bytes that are not valid UTF-8"))
        return _json_row(obj, line, text)

    def _duplicate_end(self, key: str, line: int) -> RawRow | None:
        """A well-formed element with a repeated key: skip it whole; None when it is not all in the buffer yet."""
        try:
            _, end = _PLAIN.raw_decode(self.buf, self.pos)
        except (json.JSONDecodeError, RecursionError):
            return None
        self._advance(end - self.pos)
        return _duplicate(key, line)

    def _new_scan(self) -> _Scan:
        start = self.dropped + self.pos
        return _Scan(start - self.line_start, self.buf[self.pos], start)

    def _scan(self, s: _Scan) -> None:
        """Go on scanning the element to the end of the buffer, or until its end is found."""
        i = s.at - self.dropped
        while s.end is None:
            m = _STRUCTURE.search(self.buf, i)
            if m is None:
                i = max(i, len(self.buf))  # past the end only when an escape's character is still to come
                break
            ch, i = m.group(), m.end()
            if ch == "\n":  # a raw line break also ends a string: a JSON string cannot hold one
                s.in_string = False
                if not self._line_start(s, i):
                    i -= 1  # the next line is not buffered yet: look at this line break again
                    break
            elif s.in_string:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    s.in_string = False
            elif ch == '"':
                s.in_string = True
            elif ch in "{[":
                s.depth += 1
            elif s.depth == 0 and ch in ",]":
                s.end = self.dropped + m.start()
            elif ch in "}]":
                s.depth = max(s.depth - 1, 0)  # a stray closer is part of the bad element
        s.at = self.dropped + i

    def _line_start(self, s: _Scan, i: int) -> bool:
        """Note a cut if the line at buf[i] starts with the element's opener at its column; False if not buffered."""
        j = i
        while j < len(self.buf) and self.buf[j] in " \t":
            j += 1
        if j == len(self.buf) and not self.eof:
            return False
        if s.cut is None and j - i == s.column and j < len(self.buf) and self.buf[j] == s.opener:
            s.cut = self.dropped + j
        return True

    def _skip_bad(self, line: int, s: _Scan, what: str) -> tuple[RawRow, str]:
        """Consume a bad element up to its cut, its end, or the end of the file, and report it."""
        if s.cut is not None and (s.end is None or s.cut < s.end):
            stop, after = s.cut - self.dropped, "value"
        elif s.end is not None:
            stop, after = s.end - self.dropped, "comma"
        else:
            stop, after = len(self.buf), "eof"
        text = self.buf[self.pos:stop]
        self._advance(stop - self.pos)
        if _SURROGATE.search(text):
            return RawRow(line, None, finding(line, "", "utf8.invalid", "the row has bytes that are not valid UTF-8")), after
        return RawRow(line, None, finding(line, "", "json.invalid", f"element is {what}")), after

    def _skip_huge(self, line: int, s: _Scan) -> tuple[RawRow, str]:
        """An element over the size limit: scan on to its end without keeping it, then report it."""
        while s.end is None:
            self._advance(min(s.at - self.dropped, len(self.buf)) - self.pos)  # consumed: _fill may drop it
            if not self._fill():
                self._advance(len(self.buf) - self.pos)
                return self._too_long(line), "eof"
            self._scan(s)
        self._advance(s.end - self.dropped - self.pos)
        return self._too_long(line), "comma"

    def _too_long(self, line: int) -> RawRow:
        return RawRow(line, None, finding(line, "", "line.too_long", f"row is over {MAX_ROW_BYTES >> 20} MB"))

    def _bad(self, what: str) -> RawRow:
        return RawRow(self.line, None, finding(self.line, "", "json.invalid", what))

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(self.CHUNK)
        self.eof = not data
        if self.pos > len(self.buf) // 2:  # drop what is consumed so memory stays bounded
            self.dropped += self.pos
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
            self._count_lines(start, self.pos)
            if self.pos < len(self.buf) or not self._fill():
                return

    def _advance(self, n: int) -> None:
        self._count_lines(self.pos, self.pos + n)
        self.pos += n

    def _count_lines(self, start: int, stop: int) -> None:
        """Account for the line breaks in buf[start:stop], which is being consumed."""
        breaks = self.buf.count("\n", start, stop)
        if breaks:
            self.line += breaks
            self.line_start = self.dropped + self.buf.rfind("\n", start, stop) + 1


# ------------------------------------------------------------------ CSV / TSV


def _read_csv(path: Path, gz: bool, head: bytes, delimiter: str = ",") -> Iterator[RawRow]:
    csv.field_size_limit(MAX_ROW_BYTES)
    with _open(path, gz) as fb:
        lines = _Lines(io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline=""))
        reader = csv.reader(lines, delimiter=delimiter)
        try:
            header, start = _csv_header(reader, lines)
        except csv.Error as e:
            yield RawRow(0, None, finding(1, "", "csv.header", f"the header row cannot be read ({e})"))
            return
        if header is None:
            yield _file_problem("file.empty", f"{path} has no header row")
            return
        if problem := _header_problem(header):
            yield RawRow(0, None, finding(start, "", "csv.header", problem))
            return
        yield from _csv_records(reader, lines, header)


def _read_tsv(path: Path, gz: bool, head: bytes) -> Iterator[RawRow]:
    return _read_csv(path, gz, head, delimiter="\t")


class _Lines:
    """The lines csv.reader reads, counted, with the quote characters seen since `record_start()`.

    csv gives up on a record half-way (a field over the size limit) and starts again on the next
    line, which may be inside the bad field: the count of quotes says whether it is, so the
    reader can skip to the record's real end instead of reading the field's text as rows.
    """

    def __init__(self, text: IO[str]):
        self.text = text
        self.line = 0
        self.quotes = 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        line = next(self.text)
        self.line += 1
        self.quotes += line.count('"')
        return line

    def record_start(self) -> int:
        """Start counting a new record; return the line it starts on."""
        self.quotes = 0
        return self.line + 1

    def skip_open_field(self) -> None:
        """After a record csv gave up on: skip the lines up to where its open quoted field closes."""
        # Quotes inside a quoted field come doubled, so an odd count means a field is still open.
        while self.quotes % 2:
            if next(self, None) is None:
                return


def _csv_header(reader, lines: _Lines) -> tuple[list[str] | None, int]:
    for record in reader:
        if any(cell.strip() for cell in record):
            return [cell.strip() for cell in record], lines.line
    return None, 0


def _header_problem(header: list[str]) -> str | None:
    if any(_SURROGATE.search(h) for h in header):
        return "the header row is not valid UTF-8"
    if "" in header:
        return f"column {header.index('') + 1} of the header row has no name"
    dup = next((h for h in header if header.count(h) > 1), None)
    return f"column name '{dup}' appears twice in the header row" if dup else None


def _csv_records(reader, lines: _Lines, header: list[str]) -> Iterator[RawRow]:
    while True:
        line = lines.record_start()
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            lines.skip_open_field()
            yield RawRow(line, None, _csv_error(e, line))
            continue
        if not any(cell.strip() for cell in record):
            continue
        if len(record) != len(header):
            what = f"row has {len(record)} fields, the header has {len(header)}"
            yield RawRow(line, None, finding(line, "", "csv.ragged", what))
        elif any(_SURROGATE.search(cell) for cell in record):
            yield RawRow(line, None, finding(line, "", "utf8.invalid", "the row has bytes that are not valid UTF-8"))
        else:
            yield RawRow(line, dict(zip(header, record)))


def _csv_error(e: csv.Error, line: int) -> Finding:
    if "field larger than field limit" in str(e):
        return finding(line, "", "line.too_long", f"the row has a field over {MAX_ROW_BYTES >> 20} MB")
    return finding(line, "", "csv.ragged", f"the CSV row cannot be parsed ({e})")


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
