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
    for key in ("base_model_path", "data_fingerprint", "chat_template_hash", "seed", "stop_reason", "error", "summary"):
        if key in m:
            console.print(f"{key:>14}: {m[key]}", markup=False)
    for key, choice in (m.get("resolved") or {}).items():  # what `auto` chose, and why
        console.print(f"{'auto':>14}: {key} = {choice['value']} ({choice['reason']})", markup=False)
    if m.get("budget"):
        console.print(f"{'time budget':>14}: {m['budget']['line']}", markup=False)


@runs_app.command("rm")
def rm_cmd(run: str = typer.Argument(..., help="a registered run name, or a run folder written as a path (./NAME, runs/NAME, /abs/NAME)"),
           yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation")) -> None:
    """Delete a run's folder and forget it. Only a folder tunesmith made, holding only what it wrote, is deleted."""
    from tunesmith.runs.store import removal_target, remove_run

    target = removal_target(run)
    what = (f"forget run '{target.name}' (its folder {target.dir} is gone)" if target.status == "missing"
            else f"delete run '{target.name}' and its folder {target.dir}")
    if not yes and not typer.confirm(f"{what}?"):
        raise typer.Exit(1)
    removed = remove_run(run)
    done = "forgot" if removed.status == "missing" else "removed"
    console.print(f"{done} run '{removed.name}' ({removed.dir})", markup=False)
