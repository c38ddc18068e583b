"""`tunesmith runs compare RUN1 RUN2 ...`: runs side by side (added to the `runs` group from cli/runs.py)."""

from __future__ import annotations

from typing import List

import typer


def register(app: typer.Typer) -> None:
    from tunesmith.cli.runs import runs_app

    runs_app.command("compare")(runs_compare_cmd)


def runs_compare_cmd(
    runs: List[str] = typer.Argument(..., help="run names or folders"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Put runs side by side: method, steps, best validation loss, and the tuned metrics from each run's report."""
    from rich.table import Table

    from tunesmith.cli.common import console, print_json, print_table
    from tunesmith.evaluate.side_by_side import COLUMNS, side_by_side

    rows = side_by_side(runs)
    if json_out:
        return print_json(rows)
    table = Table("run", "method", "steps", "best val loss", *COLUMNS, "forgetting (points)")
    for r in rows:
        metrics = [_num(r[c]) for c in COLUMNS] if r["evaluated"] else ["-"] * len(COLUMNS)
        table.add_row(r["run"], r["method"] or "-", str(r["steps"] or "-"), _num(r["best_val_loss"]), *metrics,
                      _num(r["forgetting_change"], "+.1f"))
    print_table(table)
    missing = [r["run"] for r in rows if not r["evaluated"]]
    if missing:
        console.print(f"not evaluated yet: {', '.join(missing)} (run `tunesmith eval RUN`)")


def _num(v, fmt: str = ".3f") -> str:
    """A number for the table; anything else as it is (a report may say "NaN", as strict JSON writes it)."""
    if v is None:
        return "-"
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
