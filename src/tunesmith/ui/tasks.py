"""The UI's long work, as functions a job child process calls (ui/jobs.py): each one wraps the same
Python API the CLI command calls, and returns JSON.

    check_data      = `tunesmith data check` (+ the masking preview and the rows behind duplicates)
    prepare_data    = `tunesmith data prepare`
    train           = `tunesmith train` (a new run, or `--resume RUN`)
    plan            = the plan `tunesmith train` prints, without training (finetune.plan)

Paths arrive absolute, already confined to the workspace by the page. These functions run in the
child only: they import torch and transformers (through the data and train code) freely.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# Every function a UI job may run ("module:function"); Jobs.start refuses any other, so a request can
# never name one. A page whose job function lives elsewhere adds it here.
TARGETS = frozenset({
    "tunesmith.ui.tasks:check_data", "tunesmith.ui.tasks:prepare_data", "tunesmith.ui.tasks:train",
    "tunesmith.ui.tasks:plan",
    "tunesmith.ui.pages.compare:compare_job", "tunesmith.ui.pages.export:export_job",
})
MAX_ISSUES = 5000  # findings sent to the page; the summary counts them all
MAX_PAIRS = 20  # duplicate / conflict pairs shown side by side


def check_data(path: str, model: str | None = None, max_length: int = 1024, format: str | None = None,
               map: str | None = None, system: str | None = None, previews: int = 3) -> dict[str, Any]:
    """The data check report, as `data check --json` gives it, plus `preview` (the first examples cut into
    trained and untrained text), `pairs` (duplicates and conflicts with both rows) and `issues_total`."""
    from tunesmith.data.check import CheckOptions, check, tokenizer_for_check
    from tunesmith.data.formats import parse_mapping, resolve_format
    from tunesmith.data.preview import preview_file

    resolve_format(format), parse_mapping(map)  # usage errors before any work, as the CLI does
    tokenizer, tokenizer_name, notes = tokenizer_for_check(model)
    opts = CheckOptions(format=format, mapping=map, system=system, tokenizer=tokenizer, tokenizer_name=tokenizer_name,
                        notes=notes, max_length=max_length)
    report = check(path, opts)
    out = report.to_dict()
    out["issues_total"], out["issues"] = len(out["issues"]), out["issues"][:MAX_ISSUES]
    out["preview"] = [dataclasses.asdict(p) for p in preview_file(path, tokenizer, n=previews, max_length=max_length,
                                                                  format=format, mapping=map, system=system)
                      ] if tokenizer is not None and report.summary.get("format") else []
    out["pairs"] = _pairs(path, report.issues, format=format, mapping=map, system=system)
    return out


def _pairs(path: str, issues, **read) -> list[dict[str, Any]]:
    """Duplicates and conflicts with the text of both rows (the first MAX_PAIRS), read in one more pass."""
    from tunesmith.data.formats import Reader

    chosen = [f for f in issues if f.rule.startswith("dup.") and f.match][:MAX_PAIRS]
    wanted = {f.line for f in chosen} | {f.match for f in chosen}
    text: dict[int, str] = {}
    if wanted:
        for row in Reader(path, format=read["format"], mapping=read["mapping"], system=read["system"]):
            if row.line in wanted and row.example is not None:
                text[row.line] = _as_text(row.example)
            if len(text) == len(wanted):
                break
    return [{"rule": f.rule, "message": f.message, "line": f.line, "match": f.match,
             "text": text.get(f.line, ""), "match_text": text.get(f.match, "")} for f in chosen]


def _as_text(example: dict) -> str:
    """A normalised example as a reader sees it: one 'role: content' line per message."""
    if "messages" in example:
        return "\n".join(f"{m['role']}: {m['content']}" for m in example["messages"])
    return json.dumps({k: v for k, v in example.items() if k != "line"}, ensure_ascii=False, indent=1)


def prepare_data(path: str, out: str, split: str = "80/10/10", seed: int = 42, near_duplicates: str = "keep",
                 format: str | None = None, map: str | None = None, system: str | None = None) -> dict[str, Any]:
    """`data prepare`: the data card, and the files written into `out`."""
    from tunesmith.data.prepare import prepare

    card = prepare(path, out, split=split, seed=seed, near_duplicates=near_duplicates, format=format, mapping=map,
                   system=system)
    files = sorted(p.name for p in Path(out).iterdir() if p.is_file())
    return {"card": card, "out": out, "files": files}


def train(overrides: list[str], name: str | None = None, resume: str | None = None,
          config: str | None = None) -> dict[str, Any]:
    """`tunesmith train [CONFIG] --set ... [--name NAME | --resume RUN]`: the run's record when it ends."""
    from tunesmith.runs.store import find_run
    from tunesmith.train.finetune import finetune

    run = finetune(config, overrides=tuple(overrides), name=name, resume=resume)
    return find_run(run.dir).to_dict() | {"summary": run.summary}


def plan(overrides: list[str], config: str | None = None) -> dict[str, Any]:
    """What `tunesmith train` would do with this config: the plan line, the `auto` choices, time and memory."""
    from tunesmith.train.finetune import plan as plan_run

    return plan_run(config, overrides=tuple(overrides))
