"""The Data page: pick or upload a file in the workspace, check it (as `tunesmith data check`), see the
findings, the verdict, token lengths, the masking preview and duplicates side by side; prepare splits.

    GET  /data                     the page
    GET  /api/data/files           data files under the workspace
    POST /api/data/upload?name=N   the raw body becomes uploads/N (never overwriting: N-2, N-3 ...)
    POST /api/data/check           {path, model, max_length, format, map, system} -> {job}
    POST /api/data/prepare         {path, out, split, seed, near_duplicates, ...}  -> {job}

The check and prepare run as jobs (ui/tasks.py): the tokenizer and the data code load in the child.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tunesmith.data.formats import FORMATS, parse_mapping, resolve_format
from tunesmith.errors import DataError
from tunesmith.models.store import BUILTIN_NAME
from tunesmith.ui import form
from tunesmith.ui.web import ui

LABEL = "Data"
router = APIRouter()


class ReadOptions(BaseModel):
    """How to read the file: the options `data check` and `data prepare` share."""

    model_config = ConfigDict(extra="forbid")
    path: str
    format: str | None = None
    map: str | None = None
    system: str | None = None

    def checked(self, request: Request) -> dict:
        """The file resolved inside the workspace, and the read options validated as the CLI does."""
        path = ui(request).workspace.resolve(self.path)
        if not path.is_file():
            raise DataError(f"{self.path} is a folder, not a data file", "pick a file")
        resolve_format(self.format or None), parse_mapping(self.map or None)
        return {"path": str(path), "format": self.format or None, "map": self.map or None,
                "system": self.system or None}


class CheckRequest(ReadOptions):
    model: str | None = None
    max_length: int = Field(1024, ge=16, le=1 << 20)


class PrepareRequest(ReadOptions):
    out: str
    split: str = "80/10/10"
    seed: int = 42
    near_duplicates: str = Field("keep", pattern="^(keep|drop)$")


@router.get("/data")
def data_page(request: Request):
    return ui(request).render(request, "data.html", active="data", files=ui(request).workspace.files(),
                              formats=FORMATS, default_model=BUILTIN_NAME,
                              max_upload_mb=ui(request).settings.max_upload_bytes // (1 << 20))


@router.get("/api/data/files")
def data_files(request: Request) -> dict:
    return {"files": ui(request).workspace.files()}


@router.post("/api/data/upload")
async def data_upload(request: Request, name: str) -> dict:
    body = await request.body()  # capped by the app's body limit for this route (--max-upload-mb)
    if not body:
        raise DataError(f"the upload of {name} is empty", "pick a file with rows in it")
    rel = await run_in_threadpool(ui(request).workspace.save_upload, name, body)
    return {"path": rel, "bytes": len(body)}


@router.post("/api/data/check")
def data_check(request: Request, body: CheckRequest) -> dict:
    model = form.model(body.model.strip(), ui(request).workspace.resolve) if (body.model or "").strip() else None
    kwargs = body.checked(request) | {"model": model, "max_length": body.max_length}
    job = ui(request).jobs.start("check", "tunesmith.ui.tasks:check_data", kwargs, title=f"check {body.path}",
                                 meta={"path": body.path})
    return {"job": job.id}


@router.post("/api/data/prepare")
def data_prepare(request: Request, body: PrepareRequest) -> dict:
    workspace = ui(request).workspace
    out = workspace.resolve(body.out, must_exist=False)
    kwargs = body.checked(request) | {"out": str(out), "split": body.split, "seed": body.seed,
                                      "near_duplicates": body.near_duplicates}
    from tunesmith.data.prepare import check_out  # numpy, not torch: light enough for the UI process

    check_out(Path(kwargs["path"]), out, overwrite=False)  # data prepare's own refusal, before the job starts
    job = ui(request).jobs.start("prepare", "tunesmith.ui.tasks:prepare_data", kwargs, title=f"prepare {body.path}",
                                 meta={"path": body.path, "out": workspace.relative(out) if out.exists() else body.out})
    return {"job": job.id}
