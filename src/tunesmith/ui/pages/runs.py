"""The Runs page: every run in the registry, one run's curves (live through SSE), config, manifest,
data card and report, and several runs' curves overlaid on one chart.

    GET /runs                              the table (name, status, base, method, best validation loss, steps, created)
    GET /runs/overlay?name=A&name=B        the chosen runs' curves on one chart
    GET /runs/{name}                       one run
    GET /runs/{name}/report                its report.html, when `tunesmith eval` wrote one
    GET /api/runs                          the table as JSON
    GET /api/runs/{name}/metrics           every complete metrics.jsonl line
    GET /api/runs/{name}/metrics/stream    server-sent events: each line as it is appended (see tail_metrics)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, StreamingResponse

from tunesmith.errors import RunError
from tunesmith.runs import registry
from tunesmith.runs.layout import RunPaths, metric_rows, read_manifest, read_metrics
from tunesmith.runs.store import RunInfo, find_run, list_runs
from tunesmith.ui.web import ui

LABEL = "Runs"
POLL_S = 0.4  # how often a live curve looks at metrics.jsonl: a logged step shows well within 2 s
IDLE_END_S = 3600.0  # a stream with nothing new for an hour ends (the browser reconnects when the page is open)
FINISHED_QUIET_S = 2.0  # a run that is not running, quiet this long: the stream ends
PING_S = 15.0
router = APIRouter()


def registered_run(name: str) -> RunInfo:
    """A registered run by name; never a folder named in the URL (find_run would take one). Every page
    that takes a run from the browser looks it up here."""
    if registry.get(name) is None:
        names = [r["name"] for r in registry.rows()[:10]]
        raise RunError(f"unknown run '{name}'", f"known runs: {', '.join(names)}" if names else "no runs yet")
    return find_run(name)


def deliverable_runs() -> list[RunInfo]:
    """The registered runs that have a deliverable (final/): what Compare, Chat and Export offer."""
    return [r for r in list_runs() if r.paths.final.is_dir()]


def _row(run: RunInfo) -> dict:
    d = run.to_dict()
    return {k: d[k] for k in ("name", "status", "base_model", "method", "best_val_loss", "best_step", "steps",
                              "created_at")}


@router.get("/runs")
def runs_page(request: Request):
    return ui(request).render(request, "runs.html", active="runs", runs=[_row(r) for r in list_runs()])


@router.get("/api/runs")
def runs_json() -> dict:
    return {"runs": [_row(r) for r in list_runs()]}


@router.get("/runs/overlay")
def overlay_page(request: Request, name: list[str] = Query(default=[])):
    runs = [_row(registered_run(n)) for n in name]
    return ui(request).render(request, "runs_overlay.html", active="runs", runs=runs)


@router.get("/runs/{name}")
def run_page(request: Request, name: str):
    run = registered_run(name)
    paths = run.paths
    config = paths.config.read_text(encoding="utf-8") if paths.config.is_file() else ""
    card = _card(paths)
    return ui(request).render(request, "run.html", active="runs", run=_row(run), dir=str(run.dir), config=config,
                              manifest=json.dumps(run.manifest, indent=2, default=str),
                              card=card,
                              report=(run.dir / "report.html").is_file(), error=run.manifest.get("error"))


def _card(paths: RunPaths) -> str:
    """The run's data card as indented JSON ('' when there is none, a note when it is unreadable)."""
    path = paths.data / "data_card.json"
    if not path.is_file():
        return ""
    try:
        return json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=2)
    except (OSError, ValueError) as e:
        return f"(unreadable: {e})"


@router.get("/runs/{name}/report")
def run_report(name: str):
    path = registered_run(name).dir / "report.html"
    if not path.is_file():
        raise RunError(f"run '{name}' has no report yet", f"`tunesmith eval {name}` writes one")
    # the report is tunesmith's own file, but sandboxed anyway: it never runs script with the UI's cookie
    return FileResponse(path, media_type="text/html", headers={"Content-Security-Policy": "sandbox"})


@router.get("/api/runs/{name}/metrics")
def run_metrics(name: str) -> dict:
    run = registered_run(name)
    return {"name": run.name, "status": run.status, "rows": read_metrics(run.paths)}


@router.get("/api/runs/{name}/metrics/stream")
async def run_metrics_stream(request: Request, name: str):
    return StreamingResponse(_events(request, _streamed(request, name)), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _streamed(request: Request, name: str) -> RunPaths:
    """A registered run's folder, or the folder a training job of this UI is about to make (the page
    follows a run from its start, before finetune registers it)."""
    if registry.get(name) is not None:
        return registered_run(name).paths
    for job in ui(request).jobs.list("train"):
        if job.meta.get("run") == name and job.meta.get("dir"):
            return RunPaths(Path(job.meta["dir"]))
    return registered_run(name).paths  # refuses with the known runs


async def _events(request: Request, paths: RunPaths) -> AsyncIterator[str]:
    """Every metrics line so far, then each new one as it lands; a `reset` event before the lines of a
    file read again from its start (a resume replaced it: the page drops the rows it has), a `status`
    event when the run's status changes, and an `end` event once a run that is not running has been
    quiet for FINISHED_QUIET_S (the page closes the stream instead of the browser reconnecting and
    receiving it all again)."""
    status, quiet, since_ping = None, 0.0, 0.0
    async for batch in tail_metrics(paths.metrics, is_done=request.is_disconnected):
        if batch.reset:
            yield "event: reset\ndata: {}\n\n"
        for row in batch.rows:
            yield f"data: {json.dumps(row)}\n\n"
        now = _status(paths)
        if now != status and now != "?":
            status = now
            yield f"event: status\ndata: {json.dumps({'status': now})}\n\n"
        quiet = 0.0 if batch.rows else quiet + POLL_S
        if status not in (None, "running") and quiet >= FINISHED_QUIET_S:
            yield "event: end\ndata: {}\n\n"
            return
        since_ping = 0.0 if batch.rows else since_ping + POLL_S
        if since_ping >= PING_S:  # lets the server notice a client that left
            since_ping = 0.0
            yield ": keep-alive\n\n"


def _status(paths: RunPaths) -> str:
    try:
        return read_manifest(paths).get("status", "?")
    except RunError:  # not written yet (a run about to start), or mid-replace
        return "?"


@dataclass(frozen=True)
class Batch:
    """What one poll of tail_metrics found: the new rows, and whether they start the file over."""

    rows: list[dict]
    reset: bool = False  # the file was replaced or shrank: `rows` are read from its start


async def tail_metrics(path: Path, *, is_done, poll_s: float = POLL_S, idle_end_s: float = IDLE_END_S
                       ) -> AsyncIterator[Batch]:
    """Batches of complete JSON lines appended to `path` (from the start), polling it every `poll_s`.

    Works for any writer (a run started from the terminal too): only the file is read. A torn
    last line waits for its newline. A file that shrinks or is replaced (a resume truncates metrics
    past its checkpoint by writing a new file, which may have grown past the old offset by the next
    poll: the inode tells) is read again from the start, in a batch with `reset`. Yields empty
    batches on idle polls; ends when `await is_done()` is true or after `idle_end_s` without news.
    """
    offset, pending, idle, inode = 0, b"", 0.0, None
    while not await is_done() and idle < idle_end_s:
        try:
            st = path.stat()
            size, now_inode = st.st_size, st.st_ino
        except OSError:
            size, now_inode = 0, inode
        reset = offset > 0 and (size < offset or now_inode != inode)
        if reset:
            offset, pending = 0, b""
        inode = now_inode
        rows: list[dict] = []
        if size > offset:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(size - offset)
            offset += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            rows = metric_rows(lines)
        idle = 0.0 if rows or reset else idle + poll_s
        yield Batch(rows, reset)
        if not rows:
            await asyncio.sleep(poll_s)
