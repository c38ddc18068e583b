"""`data prepare`: normalise, drop duplicates, split without leakage, write canonical splits and a data card.

Invariant: every row read is either kept (in exactly one split) or in rejected.jsonl with its
line and reason. Rows with the same input, near duplicates and rows whose inputs are near copies
beyond the shared context (`dedup`) never cross splits. The output folder appears in one step, and
replaces nothing of the user's (`check_out`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunesmith.data.dedup import NEAR_THRESHOLD, PAIR_KINDS, Fingerprints, input_output
from tunesmith.data.formats import PREFERENCE_FORMATS, Reader
from tunesmith.data.rules import is_error
from tunesmith.errors import DataError
from tunesmith.io import (Keep, atomic_dir, atomic_write_json, atomic_write_jsonl, replace_clash, sha256_file,
                          some_names)
from tunesmith.models.store import places_to_keep

SPLITS = ("train", "validation", "test")
WRITTEN = (*(f"{name}.jsonl" for name in SPLITS), "rejected.jsonl")  # each with its sha256 in the card's "files"
CHECK_HINT = "run `tunesmith data check {path}` to see every problem"


@dataclass
class Splits:
    """The data a run trains and evaluates on, and the card that describes it."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    card: dict
    dir: Path


@dataclass
class _Collected:
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    rows_read: int = 0
    format: str | None = None
    file_problems: list[str] = field(default_factory=list)
    flagged: dict[str, int] = field(default_factory=dict)  # duplicate findings on rows that were kept


def parse_split(split: str | Sequence[int]) -> tuple[int, int, int]:
    """'80/10/10' or (80, 10, 10) -> three non-negative percentages summing to 100, train > 0."""
    try:
        parts = [int(float(p)) for p in (split.replace(",", "/").split("/") if isinstance(split, str) else split)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) != 100 or parts[0] == 0:
        raise DataError(f"split {split!r}: expected train/validation/test percentages summing to 100",
                        "e.g. --split 80/10/10 (or 90/10/0 without a test split)")
    return parts[0], parts[1], parts[2]


def prepare(path: str | Path, out_dir: str | Path, *, split: str | Sequence[int] = (80, 10, 10), seed: int = 42,
            near_duplicates: str = "keep", format: str | None = None, mapping: Any = None, system: str | None = None,
            tokenizer=None, max_length: int | None = None, overwrite: bool = False) -> dict:
    """Prepare `path` into `out_dir` (train/validation/test/rejected .jsonl + data_card.json); return the card.

    `near_duplicates`: "keep" (the default: a near copy is still a valid example, and dropping one
    would rest on a similarity threshold) or "drop" (every near duplicate but the first of its group).
    `out_dir` is written as a temp folder renamed into place; what an existing one may hold is
    `check_out`'s to decide (`overwrite` lets it replace a folder of other files).
    """
    if near_duplicates not in ("drop", "keep"):
        raise DataError(f"near_duplicates must be 'drop' or 'keep', not {near_duplicates!r}")
    check_out(Path(path), Path(out_dir), overwrite)  # before the work: a refusal should come at once
    pct = parse_split(split)
    got = _collect(Path(path), format=format, mapping=mapping, system=system)
    groups = _dedup(got, drop_near=near_duplicates == "drop")
    if not got.kept:
        why = "; ".join(got.file_problems) or f"all {got.rows_read} rows were rejected"
        raise DataError(f"{path}: no usable rows ({why})", CHECK_HINT.format(path=path))
    parts = assign_splits(groups, pct, seed)
    card = _card(Path(path), got, parts, pct, seed, near_duplicates, system, mapping, tokenizer, max_length)
    _write(Path(out_dir), parts, got.rejected, card, lambda: check_out(Path(path), Path(out_dir), overwrite))
    return card


def check_out(source: Path, out: Path, overwrite: bool) -> None:
    """DataError unless writing prepared splits to `out` (replacing it whole) destroys nothing of the user's.

    `out` may be missing, empty, or an earlier output of `prepare` (data_card.json beside only the
    files it writes, unchanged since: the card keeps their sha256); any other folder needs
    `overwrite`. Never replaced, even with `overwrite`: a folder holding `source` (it is read to make
    the splits), nor one of `models.store.places_to_keep` (the working folder, home, $TUNESMITH_HOME).
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file", "give a folder for the splits")
    if not out.is_dir():
        return
    clash = replace_clash(out, places_to_keep() + [Keep("the input file", source)])
    if clash:
        raise DataError(f"--out {out} {clash}: data prepare never replaces it", "choose another --out folder")
    foreign = not_prepared_here(out)
    if foreign and not overwrite:
        raise DataError(f"--out {out} holds files data prepare did not write (or that changed since): "
                        f"{some_names(foreign)}",
                        "choose another --out, or pass --overwrite to replace that folder and everything in it")


def not_prepared_here(out: Path) -> list[str]:
    """Names in folder `out` that are not an earlier `prepare` output, sorted ([] for an empty folder)."""
    names = sorted(p.name for p in out.iterdir())
    try:
        card = json.loads((out / "data_card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return names
    if not isinstance(card, dict) or not {"fingerprint", "rows_read", "splits"} <= card.keys():
        return names
    sums = card.get("files") if isinstance(card.get("files"), dict) else {}  # none in cards made before them
    return [n for n in names if n != "data_card.json"
            and (n not in WRITTEN or (n in sums and sha256_file(out / n) != sums[n]))]


def _collect(path: Path, **read_args) -> _Collected:
    """Read every row; rows with errors go straight to `rejected`."""
    reader = Reader(path, **read_args)
    got = _Collected()
    for row in reader:
        errors = [f for f in row.findings if is_error(f)]
        if row.example is None or errors:
            first = errors[0] if errors else None
            got.rejected.append({"line": row.line, "reason": first.rule if first else "format.unknown",
                                 "message": first.message if first else "the file's format is not known",
                                 "source": row.raw})
        else:
            got.kept.append(row.example)
    got.rows_read, got.format = reader.rows_read, reader.format
    got.file_problems = [f.message for f in reader.file_findings]
    return got


def _dedup(got: _Collected, *, drop_near: bool) -> list[list[dict]]:
    """Drop exact (and, when asked, near) duplicates into `rejected`; return the kept rows in leak-proof groups.

    A group is a near-input group (`dedup.Groups`): rows with the same input, near duplicates and
    rows whose inputs are near copies beyond the shared context all land in one split.
    """
    fp = Fingerprints()
    for ex in got.kept:
        fp.add(*input_output(ex))
    g = fp.groups()
    pairs = got.format in PREFERENCE_FORMATS
    kept = []
    for i, ex in enumerate(got.kept):
        kind, partner = g.kind_of(i), got.kept[int(g.partner[i])] if g.partner[i] >= 0 else None
        if kind == "exact":
            got.rejected.append(_dropped(ex, "dup.exact", f"exact duplicate of line {partner['line']}"))
        elif kind == "near" and drop_near:
            got.rejected.append(_dropped(ex, "dup.near", f"near duplicate of line {partner['line']}: "
                                                          f"{g.why(i).describe()} (>= {NEAR_THRESHOLD} each)"))
        else:
            kept.append(i)
            if kind and (not pairs or kind in PAIR_KINDS):
                got.flagged[f"dup.{kind}"] = got.flagged.get(f"dup.{kind}", 0) + 1
    groups: dict[int, list[dict]] = {}
    for i in kept:
        groups.setdefault(int(g.near_input[i]), []).append(got.kept[i])
    got.kept = [got.kept[i] for i in kept]
    return list(groups.values())


def _dropped(example: dict, rule: str, message: str) -> dict:
    return {"line": example["line"], "reason": rule, "message": message, "example": canonical(example)}


def assign_splits(groups: list[list[dict]], pct: tuple[int, int, int], seed: int) -> dict[str, list[dict]]:
    """Shuffle whole groups (seeded), fill test, then validation, the rest is train; rows keep source order."""
    order = sorted(groups, key=lambda g: g[0]["line"])
    random.Random(seed).shuffle(order)
    n = sum(len(g) for g in order)
    targets = {"test": _target(n, pct[2]), "validation": _target(n, pct[1])}
    parts: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for group in order:
        name = next((s for s in ("test", "validation") if len(parts[s]) + len(group) <= targets[s]
                     and len(parts[s]) < targets[s]), "train")
        parts[name].extend(group)
    if not parts["train"]:  # tiny data: training needs at least one row
        donor = "validation" if parts["validation"] else "test"
        parts["train"], parts[donor] = parts[donor], []
    return {name: sorted(rows, key=lambda r: r["line"]) for name, rows in parts.items()}


def _target(n: int, percent: int) -> int:
    if percent == 0:
        return 0
    return max(1, int(n * percent / 100 + 0.5)) if n >= 3 else 0


def canonical(example: dict) -> dict:
    """The example without bookkeeping keys: what training sees (a pair's prompt `messages`, `chosen`, `rejected`)."""
    return {k: example[k] for k in ("messages", "chosen", "rejected", "text") if k in example}


def fingerprint(parts: dict[str, list[dict]]) -> str:
    """sha256 over the canonical rows of every split, in order."""
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(f"#{name}\n".encode())
        for row in parts.get(name, []):
            h.update(json.dumps(canonical(row), sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def _card(path: Path, got: _Collected, parts: dict[str, list[dict]], pct, seed: int, near: str,
          system: str | None, mapping: Any, tokenizer, max_length: int | None) -> dict:
    reasons: dict[str, int] = {}
    for r in got.rejected:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    kept = sum(len(v) for v in parts.values())
    assert kept + len(got.rejected) == got.rows_read, (kept, len(got.rejected), got.rows_read)
    card = {
        "source": str(path), "source_sha256": sha256_file(path) if path.is_file() else None,
        "format": got.format, "rows_read": got.rows_read, "kept": kept, "rejected": len(got.rejected),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "kept_with_warnings": dict(sorted(got.flagged.items())),
        "splits": {name: len(rows) for name, rows in parts.items()}, "split_percent": list(pct), "seed": seed,
        "rules_applied": _rules(near, system, mapping, got.format in PREFERENCE_FORMATS),
        "fingerprint": fingerprint(parts),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if tokenizer is not None:
        card["tokens"] = token_card(parts, tokenizer, max_length)
    return card


def _rules(near: str, system: str | None, mapping: Any, pairs: bool = False) -> list[str]:
    rules = ["normalise to preference pairs (prompt messages, chosen, rejected)" if pairs else "normalise to chat messages",
             "reject rows with errors (see `tunesmith data check`)",
             "drop exact duplicates (normalised prompt + chosen + rejected)" if pairs
             else "drop exact duplicates (normalised input + output)",
             f"{'drop' if near == 'drop' else 'keep'} near duplicates (input beyond the shared context and answer "
             f"both near copies: word-bigram Jaccard >= {NEAR_THRESHOLD})",
             "keep rows with the same input, near duplicates and rows with near-copy inputs inside one split",
             "seeded shuffle of groups, then test, validation, train"]
    if system:
        rules.append(f"system prompt added where missing: {system!r}")
    if mapping:
        rules.append(f"fields mapped: {mapping}")
    return rules


def token_card(parts: dict[str, list[dict]], tokenizer, max_length: int | None) -> dict:
    from tunesmith.data.render import each_example
    from tunesmith.data.stats import measure, summarise

    return {name: summarise(each_example(rows, lambda r: measure(r, tokenizer, max_length)), max_length)
            for name, rows in parts.items()}


def _write(out: Path, parts: dict[str, list[dict]], rejected: list[dict], card: dict, check) -> None:
    """Write the splits into a temp folder, then `check()` once more and rename it to `out` in one step."""
    with atomic_dir(out, overwrite=True) as tmp:
        for name, rows in parts.items():
            atomic_write_jsonl(tmp / f"{name}.jsonl", ({**canonical(r), "source_line": r["line"]} for r in rows))
        atomic_write_jsonl(tmp / "rejected.jsonl", sorted(rejected, key=lambda r: r["line"]))
        card["files"] = _sums(tmp)
        atomic_write_json(tmp / "data_card.json", card)
        check()  # `out` may have changed while a big file was prepared


def _sums(folder: Path) -> dict[str, str]:
    """sha256 of each file in WRITTEN: how a later `prepare` tells its own output from a hand-edited file."""
    return {name: sha256_file(folder / name) for name in WRITTEN if (folder / name).is_file()}


def load_split(path: str | Path) -> list[dict]:
    """Read a canonical JSONL split; each example gets 'line' (in this file). DataError on any error."""
    reader = Reader(path)
    examples, errors = [], []
    for row in reader:
        errors += [f for f in row.findings if is_error(f)]
        if row.example is not None:
            if row.raw and "source_line" in row.raw:
                row.example["source_line"] = row.raw["source_line"]
            examples.append(row.example)
    errors = [f for f in reader.file_findings if is_error(f) and f.rule != "file.empty"] + errors  # an empty split is fine
    if errors:
        first = errors[0]
        raise DataError(f"{path}:{first.line}: {first.message} ({len(errors)} error(s) in all)", CHECK_HINT.format(path=path))
    return examples


def splits_for_training(data_cfg, out_dir: str | Path, tokenizer=None, seed: int = 42) -> Splits:
    """The splits a run uses, written into `out_dir` (the run's data/ folder).

    `data_cfg.train` is a raw file in any format or a prepared split; `validation` / `test`
    are files, or None to split them off train. Raises DataError when any file has errors
    or nothing trainable is left.
    """
    if not data_cfg.train:
        raise DataError("data.train is not set", "set data.train in the config, or --set data.train=FILE")
    out = Path(out_dir)
    given = {name: getattr(data_cfg, name) for name in ("validation", "test")}
    for name, value in (("train", data_cfg.train), *given.items()):
        if value:
            _refuse_errors(Path(value), data_cfg)
    pct = list(parse_split(data_cfg.split))
    for i, name in ((1, "validation"), (2, "test")):
        if given[name]:  # the given file replaces the split that would be cut from train
            pct[0], pct[i] = pct[0] + pct[i], 0
    card = prepare(data_cfg.train, out, split=tuple(pct), seed=seed, near_duplicates=data_cfg.near_duplicates,
                   format=data_cfg.format, mapping=data_cfg.map, system=data_cfg.system, max_length=data_cfg.max_length)
    parts = {name: load_split(out / f"{name}.jsonl") for name in SPLITS}
    for name, value in given.items():
        if value:
            parts[name] = _read_given(Path(value), data_cfg)
            atomic_write_jsonl(out / f"{name}.jsonl", ({**canonical(r), "source_line": r["line"]} for r in parts[name]))
            card["splits"][name] = len(parts[name])
            card[f"{name}_source"] = str(value)
    if not parts["train"]:
        raise DataError(f"{data_cfg.train}: no trainable rows left", CHECK_HINT.format(path=data_cfg.train))
    card["fingerprint"] = fingerprint(parts)
    if tokenizer is not None:
        card["tokens"] = token_card(parts, tokenizer, data_cfg.max_length)
    card["files"] = _sums(out)
    atomic_write_json(out / "data_card.json", card)
    return Splits(parts["train"], parts["validation"], parts["test"], card, out)


def _read_given(path: Path, data_cfg) -> list[dict]:
    from tunesmith.data.formats import read_examples

    return read_examples(path, format=data_cfg.format, mapping=data_cfg.map, system=data_cfg.system).examples


def _refuse_errors(path: Path, data_cfg) -> None:
    """DataError naming the first error and the count, pointing to `data check`."""
    from tunesmith.data.formats import read_examples

    if not path.exists():
        raise DataError(f"data file not found: {path}", "check data.train / data.validation / data.test in the config")
    result = read_examples(path, format=data_cfg.format, mapping=data_cfg.map, system=data_cfg.system)
    errors = [f for f in result.findings if is_error(f)]
    if errors:
        first = errors[0]
        where = f"{path}:{first.line}" if first.line else str(path)
        raise DataError(f"{where}: {first.message} ({len(errors)} error(s) in the file)", CHECK_HINT.format(path=path))
    if not result.examples:
        raise DataError(f"{path}: no trainable rows", CHECK_HINT.format(path=path))
