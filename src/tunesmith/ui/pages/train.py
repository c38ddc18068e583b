"""The Train page: a form generated from the typed config, validated by the config code itself (every
problem at once, the CLI's messages), the plan before starting, then the run in a job with live
curves, stop (as Ctrl-C: a checkpoint is saved) and resume (as `tunesmith train --resume RUN`).

    GET  /train                   the form, and the runs that can be resumed
    POST /api/train/validate      {values} -> {overrides} or the config's problems
    POST /api/train/plan          {values} -> {job}: finetune.plan in a child (loads the model, renders the data)
    POST /api/train/start         {values, name} -> {job, run}
    POST /api/train/resume        {run, max_steps?} -> {job, run}

`values` maps dotted config keys to the form's text; only values that differ from the defaults
become `--set key=value` items (ui/form.py). Runs are written to <workspace>/runs.
"""

from __future__ import annotations


from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config import Config, load_config
from tunesmith.errors import RunError
from tunesmith.models.store import validate_name
from tunesmith.runs.layout import new_run_name
from tunesmith.runs.store import list_runs
from tunesmith.train.finetune import check_config, check_resumable
from tunesmith.ui import form
from tunesmith.ui.pages.runs import registered_run
from tunesmith.ui.web import ui

LABEL = "Train"
RUNS_FOLDER = "runs"
RESUMABLE = ("stopped", "failed")  # a completed run has nothing to resume, a running one is in use
router = APIRouter()


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    values: dict[str, str] = Field(default_factory=dict)
    name: str | None = None


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str
    max_steps: int | None = Field(None, ge=1)  # lengthen or shorten the run (a key a resume may change)


def _overrides(request: Request, values: dict[str, str]) -> tuple[list[str], Config]:
    """The form as `--set` items and the config they make, checked as `tunesmith train` checks them
    before loading anything."""
    workspace = ui(request).workspace
    sets = form.overrides(values, workspace.resolve)
    sets.append(f"output_dir={form.yaml_text(str(workspace.root / RUNS_FOLDER))}")
    cfg = load_config(None, sets)  # ConfigError with every type and key problem
    check_config(cfg)  # ... and every value finetune refuses
    return sets, cfg


@router.get("/train")
def train_page(request: Request):
    runs = [r.name for r in list_runs() if r.status in RESUMABLE]
    running = [{"job": j.id, "run": j.meta.get("run")} for j in ui(request).jobs.list("train") if j.status == "running"]
    return ui(request).render(request, "train.html", active="train", sections=form.fields(),
                              files=ui(request).workspace.files(), resumable=runs,
                              running=running[0] if running else None)


@router.post("/api/train/validate")
def train_validate(request: Request, body: TrainRequest) -> dict:
    return {"overrides": _overrides(request, body.values)[0]}


@router.post("/api/train/plan")
def train_plan(request: Request, body: TrainRequest) -> dict:
    sets, _ = _overrides(request, body.values)
    job = ui(request).jobs.start("plan", "tunesmith.ui.tasks:plan", {"overrides": sets}, title="plan")
    return {"job": job.id}


@router.post("/api/train/start")
def train_start(request: Request, body: TrainRequest) -> dict:
    sets, cfg = _overrides(request, body.values)
    given = (body.name or "").strip()
    # the name becomes a folder under runs/ that the page streams from: never a path
    name = validate_name(given, "run") if given else _new_name(request, cfg.method.name)
    folder = ui(request).workspace.root / RUNS_FOLDER / name
    job = ui(request).jobs.start("train", "tunesmith.ui.tasks:train", {"overrides": sets, "name": name},
                                 title=f"train {name}", meta={"run": name, "dir": str(folder)})
    return {"job": job.id, "run": name}


@router.post("/api/train/resume")
def train_resume(request: Request, body: ResumeRequest) -> dict:
    run = resumable(body.run)
    sets = [f"train.max_steps={body.max_steps}"] if body.max_steps else []
    job = ui(request).jobs.start("train", "tunesmith.ui.tasks:train", {"overrides": sets, "resume": run.name},
                                 title=f"resume {run.name}", meta={"run": run.name, "dir": str(run.dir)})
    return {"job": job.id, "run": run.name}


def resumable(name: str):
    """A registered run that `tunesmith train --resume` would continue (never a folder named in the request);
    RunError with the CLI's line otherwise."""
    run = registered_run(name)
    check_resumable(run)  # finetune's own check and words
    if run.status not in RESUMABLE:
        raise RunError(f"run '{run.name}' is {run.status}; only a stopped or failed run can be resumed",
                       "stop it first" if run.status == "running" else "start a new run")
    return run


def _new_name(request: Request, method: str) -> str:
    """The name finetune would choose, chosen here so the page can follow the run from its first line."""
    folder = ui(request).workspace.root / RUNS_FOLDER
    name = new_run_name(method, folder)
    taken = {j.meta.get("run") for j in ui(request).jobs.list("train")}
    n = 1
    while name in taken:  # two starts within a second: the first has not made its folder yet
        n += 1
        name = f"{new_run_name(method, folder)}-{n}"
    return name
