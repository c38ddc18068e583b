"""The Compare page: a run's strategies side by side on a test file, run as a job, and the report read back.

    GET  /compare?run=NAME&start=N  the form, and NAME's latest report (report.json in its folder): the metrics
                                  with 95% intervals against base, the forgetting probe, the answers side by
                                  side with their differences highlighted (against base or the reference),
                                  EXAMPLES_PER_PAGE of them from example N
    POST /api/compare/start       {run, data?, strategies, probe, limit?, max_new_tokens?} -> {"job": id}

The work is `tunesmith.evaluate.compare` (as `tunesmith compare --run RUN --data FILE`) in a job's
child process (ui/jobs.py): the report lands in the run's folder, as the CLI's does, so a run
evaluated from the terminal shows here too.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from tunesmith.errors import EvalError
from tunesmith.evaluate.metrics import METRICS as METRIC_INFO
from tunesmith.evaluate.strategies import STRATEGIES, parse_strategies
from tunesmith.runs.store import RunInfo
from tunesmith.ui.pages.export import EXPORTS
from tunesmith.ui.pages.runs import deliverable_runs, registered_run
from tunesmith.ui.web import ui
from tunesmith.ui.word_diff import word_diff

LABEL = "Compare"
PROBES = ("fast", "full", "none")
# the columns every report has, in the CLI's order; user metrics and preference accuracy follow when present
METRICS = {"exact_match": "exact match", "token_f1": "token F1", "rouge_l": "ROUGE-L", "bleu": "BLEU", "loss": "loss",
           "perplexity": "perplexity"}
EXAMPLES_PER_PAGE = 50  # answers diffed and shown at once: a 500-example report renders in pages, not seconds
router = APIRouter()


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str
    data: str | None = None  # a workspace path; None = the run's own test split
    strategies: list[str] = list(STRATEGIES)
    probe: str = "fast"
    limit: int | None = None
    max_new_tokens: int | None = None


@router.get("/compare")
def compare_page(request: Request, run: str | None = None, start: int = 0):
    runs = deliverable_runs()
    chosen = registered_run(run) if run else (runs[0] if runs else None)
    report = _read_report(chosen) if chosen is not None else None
    return ui(request).render(request, "compare.html", active="compare", runs=[r.name for r in runs],
                              chosen=chosen.name if chosen else None, files=[f for f in ui(request).workspace.files() if not f.startswith(EXPORTS + "/")],
                              strategies=STRATEGIES, probes=PROBES, view=report_view(report, start) if report else None)


@router.post("/api/compare/start")
def compare_start(request: Request, body: CompareRequest) -> dict:
    """Check what is cheap to check here (the run, the file, the names, the numbers), then start the job."""
    run = registered_run(body.run)
    data = str(ui(request).workspace.resolve(body.data)) if body.data else None
    strategies = parse_strategies(body.strategies)
    if body.probe not in PROBES:
        raise EvalError(f"unknown probe mode {body.probe!r}", f"use one of {', '.join(PROBES)}")
    for name, value in (("limit", body.limit), ("max_new_tokens", body.max_new_tokens)):
        if value is not None and value < 1:
            raise EvalError(f"{name} must be >= 1, got {value}", "leave it empty for the config's value")
    kwargs = {"run": run.name, "data": data, "strategies": strategies, "probe": body.probe, "limit": body.limit,
              "max_new_tokens": body.max_new_tokens}
    job = ui(request).jobs.start("compare", "tunesmith.ui.pages.compare:compare_job", kwargs,
                                 title=f"compare {run.name}", meta={"run": run.name})
    return {"job": job.id}


def compare_job(run: str, data: str | None, strategies: list[str], probe: str, limit: int | None,
                max_new_tokens: int | None) -> dict:
    """The job's body, in the child process: the CLI's compare, its progress lines going to the job's log."""
    from tunesmith.evaluate import compare

    result = compare(data, run=run, strategies=strategies, probe=probe, limit=limit, max_new_tokens=max_new_tokens)
    return {"run": run, "report": str(result.json), "html": str(result.html), "n_examples": result.report["n_examples"]}


def _read_report(run: RunInfo) -> dict | None:
    path = run.dir / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{path} cannot be read ({e})", f"`tunesmith eval {run.name}` writes it again") from None
    return report if isinstance(report, dict) and "strategies" in report else None


# ------------------------------------------------------------------ report.json -> what the template shows


def report_view(report: dict, start: int = 0) -> dict[str, Any]:
    """The numbers of one report.json arranged for compare.html (no formatting left to the template); the
    examples from `start`, EXAMPLES_PER_PAGE of them."""
    strategies = report.get("strategies") or {}
    examples = report.get("examples") or []
    start = max(0, min(start, len(examples) - 1)) if examples else 0
    shown = examples[start:start + EXAMPLES_PER_PAGE]
    return {
        "run": report.get("run"), "data": report.get("data"), "n_examples": report.get("n_examples"),
        "created_at": report.get("created_at"), "seconds": report.get("seconds"), "notes": report.get("notes") or [],
        "base_model": report.get("base_model"),
        "metrics": metric_table(strategies, report.get("intervals") or {}, _columns(report, strategies)),
        "forgetting": forgetting_view(report.get("forgetting") or {}),
        "strategies": list(strategies),
        "examples": [example_view(e, list(strategies)) for e in shown],
        "pages": {"start": start, "end": start + len(shown), "total": len(examples),
                  "previous": max(0, start - EXAMPLES_PER_PAGE) if start else None,
                  "next": start + EXAMPLES_PER_PAGE if start + EXAMPLES_PER_PAGE < len(examples) else None},
    }


def _columns(report: dict, strategies: dict) -> list[tuple[str, str]]:
    present = {k for row in strategies.values() for k, v in row.items() if v is not None}
    named = {**METRICS, **{k: k.replace("_", " ") for k in report.get("metrics") or {} if k not in METRICS}}
    return [(k, label) for k, label in named.items() if k in present]


def metric_table(strategies: dict, intervals: dict, columns: list[tuple[str, str]]) -> dict:
    """Header and rows: per strategy and metric the value, and (but for base) the difference to base with its
    95% paired-bootstrap interval, marked better/worse when the interval excludes 0."""
    rows = []
    for name, row in strategies.items():
        cells = []
        for key, _ in columns:
            ci = (intervals.get(name) or {}).get(key)
            cells.append({"value": _num(row.get(key)), "ci": _ci(ci) if ci else "", "verdict": _verdict(key, ci)})
        rows.append({"name": name, "cells": cells, "seconds": _num(row.get("seconds_per_example"), ".2f"),
                     "tokens": row.get("tokens_generated", "")})
    return {"columns": [label for _, label in columns], "rows": rows}


def _verdict(metric: str, ci: dict | None) -> str:
    if not ci or not ci.get("significant"):
        return ""
    higher_is_better = METRIC_INFO.get(metric, (True,))[0]  # user metrics: higher is better
    better = ci["diff"] > 0 if higher_is_better else ci["diff"] < 0
    return "better" if better else "worse"


def _ci(ci: dict) -> str:
    return f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"


def _num(v: Any, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt) if isinstance(v, (int, float)) else str(v)


def forgetting_view(forgetting: dict) -> dict:
    """The probe's tasks (base -> tuned, change in points, forgot past the threshold), or why it was skipped."""
    if "skipped" in forgetting or not forgetting.get("tasks"):
        return {"skipped": forgetting.get("skipped", "not run"), "tasks": []}
    tasks = [{"name": name, "base": f"{t['base']:.1f}", "tuned": f"{t['tuned']:.1f}", "change": f"{t['change']:+.1f}",
              "n": t.get("n"), "forgot": bool(t.get("forgot"))} for name, t in forgetting["tasks"].items()]
    return {"skipped": None, "tasks": tasks, "mode": forgetting.get("mode"), "threshold": forgetting.get("threshold"),
            "warnings": forgetting.get("warnings") or []}


def example_view(example: dict, strategies: list[str]) -> dict:
    """One test example: its input and reference, and each strategy's answer as segments against base's answer
    and against the reference (the page switches between the two)."""
    answers = example.get("answers") or {}
    base = answers.get("base")
    reference = example.get("reference") or ""
    cells = []
    for name in strategies:
        text = answers.get(name, "")
        scores = (example.get("scores") or {}).get(name) or {}
        cells.append({"strategy": name, "text": text,
                      "vs_base": word_diff(base, text) if base is not None and name != "base" else [("same", text)],
                      "vs_reference": word_diff(reference, text),
                      "rouge_l": _num(scores.get("rouge_l")), "exact": bool(scores.get("exact_match"))})
    return {"line": example.get("line"), "input": example.get("input", ""), "reference": reference, "cells": cells}
