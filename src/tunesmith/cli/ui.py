"""`tunesmith ui [--port N] [--host H] [--workspace DIR] [--api-key KEY]`: the web UI, a thin shell over ui/app.py."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli.common import err_console


def register(app: typer.Typer) -> None:
    app.command("ui")(ui_cmd)


def ui_cmd(
    port: int = typer.Option(8765, "--port", help="port to listen on (0 = a free one)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; anything but loopback should have --api-key"),
    workspace: Path = typer.Option(Path("."), "--workspace", help="the folder the UI may read and write (file pickers, uploads, runs/)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="the access token to use instead of a generated one",
                                          envvar="TUNESMITH_API_KEY"),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", help="largest data file an upload may be, in MB"),
) -> None:
    """Open the whole path in a browser: check data, train with live curves, browse and compare runs."""
    import secrets

    from tunesmith.serve.server import bind, uvicorn_server
    from tunesmith.ui.app import create_app
    from tunesmith.ui.guard import exposure_warning
    from tunesmith.ui.web import MB

    warning = exposure_warning(host)
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {warning}")
    token = api_key or secrets.token_urlsafe(24)
    app = create_app(workspace, token, host=host, max_upload_bytes=max_upload_mb * MB)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"tunesmith ui on {app.state.ui.workspace.root}: open "
                      f"http://{shown}:{sock.getsockname()[1]}/?token={token} (Ctrl-C stops)", markup=False, soft_wrap=True)
    uvicorn_server(app).run(sockets=[sock])
