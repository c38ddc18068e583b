"""`data check`: every problem in a data file at once, with line, field, rule, severity and a hint.

One streaming pass reads and normalises the rows (structure, types, roles, personal data, and
token lengths when a tokenizer is given) while fingerprinting them; duplicates, conflicts and
leakage against another file are found at the end from the fingerprints alone.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.data.context import combined
from tunesmith.data.dedup import NEAR_THRESHOLD, PAIR_KINDS, Fingerprints, Groups, cross_matches, input_output
from tunesmith.data.formats import PREFERENCE_FORMATS, Reader, is_preference
from tunesmith.data.pii import find_pii
from tunesmith.data.preference import PairRules
from tunesmith.data.rules import ERROR, RULES, Finding, finding, is_error

SAMPLE_ROWS = 200  # usable examples kept for the speed measurement


@dataclass
class CheckOptions:
    """How to read the file and what to check besides structure and duplicates."""

    format: str | None = None
    mapping: Any = None
    system: str | None = None
    tokenizer: Any = None  # token statistics and length rules when given
    tokenizer_name: str | None = None  # which model's tokenizer that is, for the summary
    notes: list[str] = field(default_factory=list)  # said in the summary (e.g. why there are no length checks)
    max_length: int = 1024
    against: str | Path | None = None  # another file to check for overlap (leakage)
    near: bool = True  # near-duplicate detection
    progress: Callable[[int], None] | None = None  # called with the rows read so far, now and then


@dataclass
class Report:
    """The findings, sorted by line, and a summary (counts per rule, duplicates, tokens, readiness)."""

    summary: dict
    issues: list[Finding]
    sample: list[dict] = field(default_factory=list)  # a few usable examples (for the speed measurement)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.issues if is_error(f))

    def to_dict(self) -> dict:
        return {"summary": self.summary, "issues": [f.to_dict() for f in self.issues]}


@dataclass
class _Pass:
    """What the streaming pass keeps per usable row: its line, fingerprint and token counts."""

    lines: array = field(default_factory=lambda: array("q"))  # 8 bytes a row
    tokens: list = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    error_rows: int = 0
    sample: list[dict] = field(default_factory=list)
    pairs: PairRules = field(default_factory=PairRules)  # preference pairs only


def check(path: str | Path, options: CheckOptions | None = None) -> Report:
    """Check `path` and return every finding and the summary (see Report)."""
    opts = options or CheckOptions()
    reader = Reader(path, format=opts.format, mapping=opts.mapping, system=opts.system)
    fp = Fingerprints(near=opts.near)
    state = _stream(reader, fp, opts)
    other = _Other.read(opts) if opts.against is not None else None
    # with another file, its rows count towards the shared context too (a test split alone may have
    # too few rows per database to tell its schema from copied text)
    table = combined(fp.shared(), other.fp.shared()) if other and opts.near and len(fp) and len(other.fp) else None
    groups = fp.groups(table)
    pairs = reader.format in PREFERENCE_FORMATS
    state.findings += duplicate_findings(groups, state.lines, pairs=pairs)
    if pairs:
        state.findings += state.pairs.findings()
    leaks = None
    if other is not None:
        leak_findings, leaks = leak_check(fp, state.lines, other)
        state.findings += leak_findings
    issues = sorted(reader.file_findings + state.findings, key=lambda f: (f.line, f.rule, f.field))
    summary = summarise(Path(path), reader, state, issues, opts, leaks)
    summary["shared_context_rows"] = groups.context_rows
    return Report(summary, issues, state.sample)


def tokenizer_for_check(model: str | None) -> tuple[Any, str | None, list[str]]:
    """(tokenizer, which one, notes) for a check: `model`'s, else the default model's, so a
    6,000-token row is reported without a model named; when that is not installed, none and a note.
    Only the tokenizer loads (no weights)."""
    from tunesmith.errors import ModelError
    from tunesmith.models.load import load_tokenizer_only
    from tunesmith.models.store import BUILTIN_NAME

    if model is not None:
        return load_tokenizer_only(model), model, []
    try:
        return load_tokenizer_only(BUILTIN_NAME), f"{BUILTIN_NAME} (the default model; --model NAME for yours)", []
    except ModelError as e:
        return None, None, [f"length checks skipped: no --model given and the default model's tokenizer "
                            f"is not available: {e}"]


def _stream(reader: Reader, fp: Fingerprints, opts: CheckOptions) -> _Pass:
    state = _Pass()
    for n, row in enumerate(reader, 1):
        state.findings += row.findings
        if any(is_error(f) for f in row.findings):
            state.error_rows += 1
        if row.example is not None:
            _usable_row(row, fp, state, opts)
        if opts.progress and n % 1000 == 0:
            opts.progress(n)
    if opts.progress:
        opts.progress(reader.rows_read)
    return state


def _usable_row(row, fp: Fingerprints, state: _Pass, opts: CheckOptions) -> None:
    example = row.example
    fp.add(*input_output(example))
    state.lines.append(row.line)
    state.findings += pii_findings(example, row.fields, row.line)
    if is_preference(example):
        state.pairs.add(example)
    if opts.tokenizer is not None:
        state.findings += _token_findings(example, row.line, state, opts)
    if len(state.sample) < SAMPLE_ROWS:
        state.sample.append(example)


def _token_findings(example: dict, line: int, state: _Pass, opts: CheckOptions) -> list[Finding]:
    """Measure the example's tokens (both sequences of a pair) into `state`; the length findings."""
    from tunesmith.data import preference
    from tunesmith.data.stats import both, measure, measure_pair

    if is_preference(example):
        sides = measure_pair(example, opts.tokenizer, opts.max_length)
        state.tokens.append(both(*sides))
        return preference.length_findings(sides, line, opts.max_length)
    counts = measure(example, opts.tokenizer, opts.max_length)
    state.tokens.append(counts)
    return length_findings(counts, line, opts.max_length, "messages" in example)


def pii_findings(example: dict, fields: list[str], line: int) -> list[Finding]:
    """pii.* per text of the example; `fields` names each (a pair's: its prompt's, then its two answers')."""
    texts = [m["content"] for m in example["messages"]] if "messages" in example else [example["text"]]
    if is_preference(example):
        texts += [example["chosen"], example["rejected"]]
    out = []
    for i, text in enumerate(texts):
        label = fields[i] if i < len(fields) else ""
        for rule, sample in find_pii(text):
            what = {"pii.email": "an e-mail address", "pii.phone": "a phone number", "pii.card": "a card number"}[rule]
            out.append(finding(line, label, rule, f"possible personal data: {what} ({sample})"))
    return out


def length_findings(counts, line: int, max_length: int | None, chat: bool) -> list[Finding]:
    out = []
    if max_length and counts.truncated:
        what = (f"{counts.total} tokens, over max_length {max_length}: truncation cuts {counts.truncated} tokens "
                f"({counts.trained - counts.kept_trained} of them trained)")
        out.append(finding(line, "", "length.over_context", what))
    if chat and counts.answer < 3:
        out.append(finding(line, "", "answer.too_short", f"the answer is {max(counts.answer - 1, 0)} token(s) long"))
    elif chat and max_length and counts.answer > 0.75 * max_length:
        out.append(finding(line, "", "answer.too_long", f"the answer is {counts.answer} tokens, over 3/4 of max_length {max_length}"))
    return out


def duplicate_findings(g: Groups, lines: list[int], *, pairs: bool = False) -> list[Finding]:
    """dup.exact, dup.conflict, dup.near and dup.near_input, each citing the earlier row it matches.

    `pairs`: the rows are preference pairs, and only copies of whole pairs (exact, near) are found.
    """
    return [finding(lines[i], "", f"dup.{g.kind_of(i)}", duplicate_message(g, i, lines[g.partner[i]]),
                    match=lines[g.partner[i]])
            for i in map(int, g.kind.nonzero()[0]) if not pairs or g.kind_of(i) in PAIR_KINDS]


def duplicate_message(g: Groups, i: int, line: int) -> str:
    """What row i is to the row at `line`, and for near matches what made them alike."""
    kind = g.kind_of(i)
    if kind == "exact":
        return f"exact duplicate of line {line}"
    if kind == "conflict":
        return f"same input as line {line}, different answer (answers {g.output_similarity[i]:.2f} alike)"
    if kind == "near":
        return f"near duplicate of line {line}: {g.why(i).describe()}"
    return f"input is a near copy of line {line}'s, the answer is not: {g.why(i).describe()}"


@dataclass
class _Other:
    """The file given with --against: its fingerprints, the line of each usable row, the rows read."""

    path: Path
    fp: Fingerprints
    lines: list[int]
    rows_read: int

    @classmethod
    def read(cls, opts: CheckOptions) -> "_Other":
        reader = Reader(opts.against, format=None, mapping=opts.mapping, system=opts.system)
        fp, lines = Fingerprints(near=opts.near), []
        for row in reader:
            if row.example is not None:
                fp.add(*input_output(row.example))
                lines.append(row.line)
        return cls(Path(opts.against), fp, lines, reader.rows_read)


def leak_check(fp: Fingerprints, lines: list[int], other: _Other) -> tuple[list[Finding], dict]:
    """leak.exact / leak.near for rows that also occur in the other file (near: the input beyond the context)."""
    m = cross_matches(fp, other.fp)
    name, at, out = other.path.name, other.lines, []
    for i, line in enumerate(lines):
        if m.exact[i] >= 0:
            out.append(finding(line, "", "leak.exact", f"also in {name} line {at[m.exact[i]]}"))
        elif m.same_input[i] >= 0:
            out.append(finding(line, "", "leak.exact", f"same input as {name} line {at[m.same_input[i]]}"))
        elif m.near[i] >= 0:
            out.append(finding(line, "", "leak.near", f"input is a near copy of {name} line {at[m.near[i]]}'s: "
                                                      f"{m.why(i).describe()}"))
    counts = {"file": str(other.path), "rows": other.rows_read,
              "exact": sum(1 for f in out if f.rule == "leak.exact"), "near": sum(1 for f in out if f.rule == "leak.near")}
    return out, counts


def summarise(path: Path, reader: Reader, state: _Pass, issues: list[Finding], opts: CheckOptions,
              leaks: dict | None) -> dict:
    from tunesmith.data.readiness import verdict

    by_rule: dict[str, int] = {}
    for f in issues:
        by_rule[f.rule] = by_rule.get(f.rule, 0) + 1
    dup_rows = by_rule.get("dup.exact", 0) + by_rule.get("dup.near", 0)
    summary = {
        "file": str(path), "format": reader.format, "rows_read": reader.rows_read,
        "rows_with_errors": state.error_rows + (reader.rows_read if reader.format is None else 0),
        "usable_rows": len(state.lines) - dup_rows,
        "errors": sum(1 for f in issues if f.severity == ERROR),
        "warnings": sum(1 for f in issues if f.severity != ERROR),
        "by_rule": {rule: {"severity": RULES[rule][0], "count": n} for rule, n in sorted(by_rule.items())},
        "exact_duplicates": by_rule.get("dup.exact", 0), "near_duplicates": by_rule.get("dup.near", 0),
        "conflicts": by_rule.get("dup.conflict", 0), "near_inputs": by_rule.get("dup.near_input", 0),
        "near_threshold": NEAR_THRESHOLD,
        "tokens": None, "tokenizer": opts.tokenizer_name if opts.tokenizer is not None else None,
        "notes": list(opts.notes), "against": leaks,
    }
    if reader.format in PREFERENCE_FORMATS:
        summary["pairs"] = {k: v for k, v in state.pairs.length_gap().items() if k != "warn"}
        summary["pairs"]["contradictions"] = by_rule.get("pair.contradict", 0)
    summary["rows_with_errors"] = min(summary["rows_with_errors"], reader.rows_read)
    if state.tokens:
        from tunesmith.data.stats import summarise as token_summary

        summary["tokens"] = token_summary(state.tokens, opts.max_length)
    summary["verdict"] = verdict(summary)
    return summary
