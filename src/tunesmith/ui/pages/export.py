"""The Export page: a run written as adapter, merged model and/or GGUF, verified, and its files downloaded.

    GET  /export?run=NAME                     the form, and NAME's exports: each format's verification (every
                                              reload compared with the tuned model) and its files
    POST /api/export/start                    {run, formats, quant, dtype?, overwrite} -> {"job": id}
    GET  /export/files/{run}/{format}/{file}  one exported file (nothing outside the workspace's exports/)

The work is `tunesmith.export.export` (as `tunesmith export RUN --format F --out DIR`) in a job's child
process (ui/jobs.py), once per format, into `<workspace>/exports/<run>/<format>/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.errors import ExportError
from tunesmith.export.workflow import FORMATS
from tunesmith.ui.pages.runs import deliverable_runs, registered_run
from tunesmith.ui.web import ui
from tunesmith.ui.workspace import UiPathError

LABEL = "Export"
EXPORTS = "exports"  # the workspace folder exports go to, one folder per run and format
DTYPES = ("float32", "bfloat16", "float16")
router = APIRouter()


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str
    formats: list[str] = Field(min_length=1)
    quant: str = "q4_k_m"
    dtype: str | None = None
    overwrite: bool = False


def _exports_root(request: Request) -> Path:
    return ui(request).workspace.root / EXPORTS


@router.get("/export")
def export_page(request: Request, run: str | None = None):
    runs = deliverable_runs()
    chosen = registered_run(run).name if run else (runs[0].name if runs else None)
    exports = list_exports(_exports_root(request) / chosen, chosen) if chosen else []
    return ui(request).render(request, "export.html", active="export", runs=[r.name for r in runs], chosen=chosen,
                              formats=FORMATS, dtypes=DTYPES, exports=exports,
                              out=f"{EXPORTS}/{chosen}/<format>" if chosen else "")


@router.post("/api/export/start")
def export_start(request: Request, body: ExportRequest) -> dict:
    run = registered_run(body.run)
    unknown = [f for f in body.formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"unknown export format '{unknown[0]}'", f"choose from {', '.join(FORMATS)}")
    if body.dtype is not None and body.dtype not in DTYPES:
        raise ExportError(f"unknown dtype '{body.dtype}'", f"choose one of {', '.join(DTYPES)}")
    out = _exports_root(request) / run.name
    kwargs = {"run": run.name, "formats": list(dict.fromkeys(body.formats)), "out": str(out),
              "quants": [q.strip() for q in body.quant.split(",") if q.strip()], "dtype": body.dtype,
              "overwrite": body.overwrite}
    job = ui(request).jobs.start("export", "tunesmith.ui.pages.export:export_job", kwargs,
                                 title=f"export {run.name} as {', '.join(kwargs['formats'])}", meta={"run": run.name})
    return {"job": job.id}


def export_job(run: str, formats: list[str], out: str, quants: list[str], dtype: str | None, overwrite: bool) -> list:
    """The job's body, in the child process: one verified export per format, its progress lines in the log."""
    from tunesmith.export import export

    done = []
    for fmt in formats:
        result = export(run, fmt, Path(out) / fmt, quants=tuple(quants) or ("q4_k_m",), overwrite=overwrite,
                        dtype=dtype if fmt == "merged" else None, say=lambda s: print(s, flush=True))
        print(f"exported '{run}' as {fmt} to {result.out}", flush=True)
        done.append({"format": fmt, "out": str(result.out), "files": result.files,
                     "passed": result.verification.get("passed")})
    return done


@router.get("/export/files/{run}/{fmt}/{name}")
def export_file(request: Request, run: str, fmt: str, name: str):
    """One file of an export; refused unless it lies inside <workspace>/exports/RUN/FORMAT (symlinks followed)."""
    if fmt not in FORMATS or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise UiPathError(f"'{fmt}/{name}' is not a file of an export", "pick a file from the export's list")
    root = _exports_root(request).resolve()
    path = ui(request).workspace.resolve(f"{EXPORTS}/{registered_run(run).name}/{fmt}/{name}")
    if not path.is_relative_to(root) or not path.is_file():
        raise UiPathError(f"'{fmt}/{name}' is not a file of an export", "pick a file from the export's list")
    return FileResponse(path, filename=name)


# ------------------------------------------------------------------ what is on disk -> what the page shows


def list_exports(folder: Path, run: str) -> list[dict[str, Any]]:
    """Each format folder under `folder` that holds an export's verification.json, with its checks and files."""
    out = []
    for fmt in FORMATS:
        record = _verification(folder / fmt / "verification.json")
        if record is not None:
            out.append(export_view(folder / fmt, run, fmt, record))
    return out


def _verification(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "checks" in record else None


def export_view(folder: Path, run: str, fmt: str, record: dict) -> dict[str, Any]:
    files = [{"name": p.name, "size": _size(p.stat().st_size), "href": f"/export/files/{run}/{fmt}/{p.name}"}
             for p in sorted(folder.iterdir()) if p.is_file()]
    prompts = list(zip(record.get("prompts") or [], record.get("reference_answers") or []))
    return {"format": fmt, "folder": str(folder), "passed": bool(record.get("passed")),
            "seconds": record.get("seconds"), "reference": record.get("reference"),
            "checks": [check_view(c) for c in record.get("checks") or []], "files": files, "prompts": prompts}


def check_view(c: dict) -> dict[str, str]:
    """One reload's comparison, worded as `tunesmith export` prints it."""
    what = f"{c.get('loader', '?')}{' ' + c['file'] if c.get('file') else ''}"
    status = c.get("status", "?")
    if status == "skipped":
        return {"what": what, "status": status, "detail": str(c.get("reason", ""))}
    parts = [f"{c.get('exact_matches')}/{c.get('prompts')} answers identical",
             f"token agreement {c.get('token_agreement')}"]
    if "teacher_forced_top1" in c:
        parts.append(f"teacher-forced top-1 {c['teacher_forced_top1']}")
    parts += list(c.get("problems") or [])
    return {"what": what, "status": status, "detail": ", ".join(parts)}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
