"""`tunesmith runs list | show RUN | rm RUN`: the runs registry."""

from __future__ import annotations

import typer

from tunesmith.cli.common import console, print_json, print_table

runs_app = typer.Typer(help="Training runs: list, inspect, remove.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")


def _loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


@runs_app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List every recorded run, newest first."""
    from rich.table import Table

    from tunesmith.runs.store import list_runs

    runs = list_runs()
    if json_out:
        return print_json([r.to_dict() for r in runs])
    if not runs:
        return console.print("no runs yet: `tunesmith train CONFIG.yaml` makes one")
    table = Table("name", "status", "base model", "method", "steps", "best val loss", "folder")
    for r in runs:
        d = r.to_dict()
        table.add_row(r.name, r.status, r.base_model or "-", r.method or "-", str(d["steps"] or "-"),
                      _loss(d["best_val_loss"]), str(r.dir))
    print_table(table)


@runs_app.command("show")
def show_cmd(run: str = typer.Argument(..., help="run name or folder"),
             json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Show a run's record and manifest."""
    from tunesmith.runs.store import find_run

    info = find_run(run)
    record = info.to_dict() | {"manifest": info.manifest}
    if json_out:
        return print_json(record)
    for key, value in info.to_dict().items():
        console.print(f"{key:>14}: {value}", markup=False)
    m = info.manifest
    for key in ("base_model_path", "data_fingerprint", "chat_template_hash", "seed", "stop_reason", "summary"):
        if key in m:
            console.print(f"{key:>14}: {m[key]}", markup=False)


@runs_app.command("rm")
def rm_cmd(run: str = typer.Argument(..., help="run name or folder"),
           yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")) -> None:
    """Delete a run's folder and forget it."""
    from tunesmith.runs.store import remove_run

    if not yes and not typer.confirm(f"delete run '{run}' and its folder?"):
        raise typer.Exit(1)
    removed = remove_run(run)
    console.print(f"removed run '{removed.name}' ({removed.dir})", markup=False)
