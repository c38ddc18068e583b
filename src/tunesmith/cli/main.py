"""The `tunesmith` command: registers each noun's module and turns TunesmithError into one clear line."""

from __future__ import annotations

import importlib
import os
import signal
import sys

import typer

from tunesmith.cli.common import err_console
from tunesmith.errors import TunesmithError

app = typer.Typer(
    name="tunesmith",
    help="Make a language model learn your way: check data, fine-tune, prove it beat the base model, deploy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

# Each module has register(app). Modules import heavy libraries inside their commands only,
# so `tunesmith --help` stays instant.
COMMAND_MODULES = ["models", "config_cmd", "generate", "quickstart", "train", "runs", "data", "advise", "export", "serve", "chat", "evaluate", "runs_compare", "ui"]


def _version(value: bool) -> None:
    if value:
        from tunesmith import __version__

        typer.echo(f"tunesmith {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="show full tracebacks for errors"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """tunesmith: fine-tuning with data checks, honest evaluation and safe resume."""


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"tunesmith.cli.{name}").register(app)


_register()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run() -> None:
    """Console-script entry point."""
    debug = "--debug" in sys.argv
    # SIGTERM (a scheduler's kill, `timeout`) takes the same path as Ctrl-C, so a training
    # run is recorded as stopped, not left "running". uvicorn installs its own handlers.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except TunesmithError as e:
        if debug:
            raise
        # an error every process of a launch finds alike is said once, by the main process
        if os.environ.get("RANK", "0") == "0" or not getattr(e, "every_process", False):
            err_console.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
