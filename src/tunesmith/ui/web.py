"""What every page shares: the UI's settings and state on the app, rendering a template, JSON errors.

A page module reaches everything through `ui(request)`: the workspace, the jobs runner, the
CSRF secret, `ui(request).render(request, "name.html", ...)` for its HTML, and error_response for
every error answer (HTML or JSON by one rule, wants_html).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from tunesmith.serve.guards import error_body
from tunesmith.ui.jobs import Jobs
from tunesmith.ui.workspace import Workspace

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
MB = 1 << 20
# Pages run only the package's own scripts (no inline script, nothing from another site) and may not be
# framed (no clickjacking); inline style attributes stay allowed (uPlot and a few templates use them).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                           "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
                                           "form-action 'self'",
                "X-Frame-Options": "DENY"}


@dataclass(frozen=True)
class Settings:
    """How one `tunesmith ui` process runs (the CLI's flags)."""

    workspace: Workspace
    token: str  # the access token (generated at start, or --api-key)
    state_dir: Path  # where job folders (spec, log, result) are kept
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")  # Host names accepted on a loopback bind
    max_upload_bytes: int = 50 * MB  # largest uploaded data file (and so the largest request body)
    max_body_bytes: int = 1 * MB  # largest request body for everything but an upload


@dataclass
class Ui:
    """The state of one UI process, at `app.state.ui`."""

    settings: Settings
    csrf: str  # the CSRF secret pages send back in X-CSRF-Token
    jobs: Jobs
    pages: list[tuple[str, str]]  # (module name, nav label) of the pages this UI has, in nav order
    env: jinja2.Environment

    @property
    def workspace(self) -> Workspace:
        return self.settings.workspace

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """`template` (in ui/templates/, extending base.html) with the nav, the CSRF secret and `context`
        (`anonymous=True`: neither, for a page shown before the token is checked)."""
        page = self.env.get_template(template)
        shared = {"csrf": "", "pages": [], "workspace": ""} if context.get("anonymous") else \
            {"csrf": self.csrf, "pages": self.pages, "workspace": str(self.workspace.root), "anonymous": False}
        html = page.render(request=request, **(shared | context))
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)


def ui(request: Request) -> Ui:
    return request.app.state.ui


def environment() -> jinja2.Environment:
    """Templates with autoescape on: every value from a file or a user is escaped unless marked safe."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def wants_html(request: Request) -> bool:
    """The one rule for how an answer is given: an HTML page to a browser opening a page, JSON to the
    pages' scripts (everything under /api/) and to every other client."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def error_response(request: Request, status: int, message: str, *, problems: list[str] | None = None,
                   code: str | None = None, title: str = "Something needs fixing", hint: str = "",
                   anonymous: bool = False) -> Response:
    """The UI's one error answer: error.html for a browser, else the serve API's JSON error body (plus
    every problem of a ConfigError). `anonymous`: the page goes to someone without the token, so it
    shows neither the nav and workspace nor the CSRF secret."""
    if wants_html(request):
        return ui(request).render(request, "error.html", status_code=status, anonymous=anonymous, title=title,
                                  message=message, problems=problems or [], hint=hint, active="")
    body = error_body(message, "invalid_request_error", None, code)
    if problems:
        body["error"]["problems"] = problems
    return JSONResponse(body, status_code=status)
