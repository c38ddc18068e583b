"""The web UI's app: `create_app(workspace, token)` -> FastAPI, its security, pages and errors.

How to add a page (the contract every page follows):
  1. `ui/pages/<name>.py` exposes `router = APIRouter()` and `LABEL = "Name"` (the nav text);
     add `<name>` to PAGES below in nav order.
  2. `GET /<name>` renders `ui/templates/<name>.html`, which `{% extends "base.html" %}` and fills
     the blocks `title`, `content` and `scripts`; render with `ui(request).render(request,
     "<name>.html", active="<name>", ...)` (ui/web.py).
  3. JSON endpoints live under `/api/<name>/...`; a state-changing one is POST / PUT / DELETE and
     the page calls it through `api(method, url, body)` in static/app.js, which sends the CSRF
     header and shows the error line in the page.
  4. Long or heavy work (anything that imports torch or transformers, loads a model, reads a
     big file) runs through `ui(request).jobs.start(kind, "tunesmith.module:function", kwargs)`
     (ui/jobs.py), with the function listed in ui/tasks.py's TARGETS (no other runs); the page
     polls `GET /api/jobs/<id>`. The UI process never imports torch.
  5. A user's mistake is a TunesmithError: raised in a handler it becomes the page's one-line
     message (JSON `{"error": {"message"}}` under /api/, an error page otherwise), never a
     traceback. Paths from the browser go through `ui(request).workspace.resolve(rel)`.
  6. Scripts and styles are files in ui/static/ (vendored libraries in static/vendor/ with
     their LICENSE and PROVENANCE); nothing is loaded from another site.

Security (as for the API server, serve/app.py): loopback bind by default, the Host check on a
loopback bind (serve/guards.py), the access token and CSRF rules of ui/guard.py, and a body
cap (uploads up to Settings.max_upload_bytes, everything else Settings.max_body_bytes).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.serve.guards import BodyLimit, HostCheck
from tunesmith.serve.server import is_loopback
from tunesmith.ui.guard import Gate
from tunesmith.ui.jobs import Jobs
from tunesmith.ui.web import STATIC, Settings, Ui, environment, error_response, ui
from tunesmith.ui.workspace import Workspace

PAGES = ("data", "train", "runs", "compare", "chat", "export")  # nav order
UPLOAD_PREFIX = "/api/data/upload"  # the one route whose body may be as large as an upload
log = logging.getLogger("tunesmith.ui")


def create_app(workspace: str | Path, token: str, *, host: str = "127.0.0.1", state_dir: Path | None = None,
               max_upload_bytes: int | None = None, allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The UI over `workspace` (the folder its file pickers and uploads are confined to).

    `token` is the access token (see ui/guard.py); `state_dir` keeps the job folders (default
    $TUNESMITH_HOME/ui/jobs); `host` is the bind address (the Host check is on for a loopback one).
    """
    from tunesmith.models.store import home

    if not token or not token.strip():
        raise ConfigError("the UI's access token is empty", "leave out --api-key for a generated one, or give a real key")
    given = {"max_upload_bytes": max_upload_bytes, "allowed_hosts": tuple(allowed_hosts) if allowed_hosts else None}
    settings = Settings(workspace=Workspace.at(workspace), token=token, state_dir=Path(state_dir or home() / "ui" / "jobs"),
                        host=host, **{k: v for k, v in given.items() if v is not None})
    jobs = Jobs(settings.state_dir, cwd=settings.workspace.root)
    pages = _pages()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.close()

    app = FastAPI(title="tunesmith ui", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ui = Ui(settings, secrets.token_urlsafe(32), jobs, [(name, module.LABEL) for name, module in pages],
                      environment())
    # each add_middleware wraps the ones before it: a request meets the Host check, then the body cap,
    # then the token and CSRF gate
    app.add_middleware(Gate, token=token, csrf=app.state.ui.csrf)
    app.add_middleware(_BodyCaps, small=settings.max_body_bytes, large=settings.max_upload_bytes)
    if is_loopback(host) and "*" not in settings.allowed_hosts:
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts, setting="--host / allowed hosts")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    _add_common_routes(app)
    for _, module in pages:
        app.include_router(module.router)
    return app


def _pages() -> list[tuple[str, object]]:
    """The page modules, in nav order (a misspelt name is an ImportError, not a page quietly missing)."""
    return [(name, importlib.import_module(f"tunesmith.ui.pages.{name}")) for name in PAGES]


class _BodyCaps:
    """BodyLimit with two caps: uploads may be large, every other body is small."""

    def __init__(self, app, small: int, large: int):
        self.small = BodyLimit(app, small, "the UI's body limit")
        self.large = BodyLimit(app, large, "--max-upload-mb")

    async def __call__(self, scope, receive, send):
        upload = scope["type"] == "http" and scope.get("path", "").startswith(UPLOAD_PREFIX)
        await (self.large if upload else self.small)(scope, receive, send)


def _add_common_routes(app: FastAPI) -> None:
    @app.get("/")
    async def home(request: Request):
        first = ui(request).pages[0][0] if ui(request).pages else None
        return RedirectResponse(f"/{first}" if first else "/api/jobs", status_code=303)

    @app.get("/api/jobs")
    async def jobs_list(request: Request, kind: str | None = None) -> dict:
        return {"jobs": [j.to_dict() for j in ui(request).jobs.list(kind)]}

    @app.get("/api/jobs/{job_id}")
    async def job_detail(request: Request, job_id: str, log: bool = False) -> dict:
        job = ui(request).jobs.get(job_id)
        return job.to_dict() | ({"log": job.log()} if log else {})

    @app.post("/api/jobs/{job_id}/stop")
    async def job_stop(request: Request, job_id: str) -> dict:
        return ui(request).jobs.stop(job_id).to_dict()


def _add_error_handlers(app: FastAPI) -> None:
    def answer(request: Request, status: int, message: str, problems: list[str] | None = None):
        return error_response(request, status, message, problems=problems)

    @app.exception_handler(TunesmithError)
    async def user_error(request: Request, e: TunesmithError):
        problems = e.problems if isinstance(e, ConfigError) and len(e.problems) > 1 else None
        return answer(request, 400, str(e) if problems is None else e.message.split(":\n")[0], problems)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = (e.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return answer(request, 400, f"{where or 'request'}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        not_found = e.status_code == 404 and e.detail == "Not Found"
        return answer(request, e.status_code, "no such page" if not_found else str(e.detail))

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return answer(request, 500, f"unexpected error ({type(e).__name__}); this is a bug, the traceback is in the "
                                    "terminal running `tunesmith ui`")
