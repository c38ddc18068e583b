"""Runs side by side (`tunesmith runs compare`): each run's manifest facts and its evaluation report's numbers."""

from __future__ import annotations

import json
from typing import Any, Sequence

from tunesmith.errors import EvalError

COLUMNS = ("exact_match", "token_f1", "rouge_l", "bleu", "loss")


def side_by_side(runs: Sequence[Any]) -> list[dict]:
    """One row per run: name, method, base model, steps, best validation loss, the tuned strategy's
    metrics from report.json (None when the run has not been evaluated) and the mean forgetting change."""
    from tunesmith.runs.store import find_run

    if len(runs) < 1:
        raise EvalError("name at least one run", "e.g. tunesmith runs compare RUN1 RUN2")
    return [_row(find_run(r)) for r in runs]


def _row(info) -> dict:
    m = info.manifest
    row: dict[str, Any] = {"run": info.name, "status": info.status, "method": info.method, "base_model": info.base_model,
                           "steps": m.get("steps"), "best_val_loss": m.get("best_val_loss"), "evaluated": False}
    report = _read_report(info)
    tuned = (report.get("strategies") or {}).get("tuned") or {}
    base = (report.get("strategies") or {}).get("base") or {}
    for col in COLUMNS:
        row[col] = tuned.get(col)
        row[f"base_{col}"] = base.get(col)
    tasks = (report.get("forgetting") or {}).get("tasks") or {}
    row["forgetting_change"] = sum(t["change"] for t in tasks.values()) / len(tasks) if tasks else None
    row["evaluated"] = bool(tuned)
    row["report"] = str(info.dir / "report.html") if (info.dir / "report.html").is_file() else None
    return row


def _read_report(info) -> dict:
    path = info.dir / "report.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged report reads as "not evaluated"; `tunesmith eval RUN` rewrites it
