"""Tables never cut a name: `tunesmith models list | grep NAME` finds it (issue 12)."""

from __future__ import annotations

import os
import subprocess
import sys

from tunesmith.models.store import BUILTIN_NAME

CLI = [sys.executable, "-c", "from tunesmith.cli.main import run; run()"]
LONG = "a-run-with-a-rather-long-descriptive-name-v1.2"


def piped(*args: str, columns: int = 40) -> str:
    """stdout of the CLI into a pipe (not a terminal), with a narrow COLUMNS."""
    done = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": str(columns)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def lines_with(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if name in line]


def rows_with(out: str, name: str) -> list[str]:
    """The table rows (not other lines) that hold `name`."""
    return [line for line in lines_with(out, name) if line.startswith("│")]


def _make_run(tmp_path, name):
    from tunesmith.runs.layout import RunPaths, write_manifest
    from tunesmith.runs.store import register_run

    paths = RunPaths(tmp_path / "runs" / name)
    paths.dir.mkdir(parents=True)
    manifest = {"name": name, "status": "completed", "base_model": BUILTIN_NAME, "base_model_path": "/x",
                "method": "lora", "best_val_loss": 1.5, "best_step": 4, "steps": 6, "created_at": "2025-01-01T00:00:00"}
    write_manifest(paths, manifest)
    register_run(paths.dir, manifest)


def test_models_list_piped_keeps_every_name_whole(store_home):
    assert len(rows_with(piped("models", "list"), BUILTIN_NAME)) == 1


def test_runs_list_and_compare_piped_keep_run_names_whole(store_home, tmp_path):
    _make_run(tmp_path, LONG)
    _make_run(tmp_path, LONG + "-b")
    listed = piped("runs", "list")
    assert len(rows_with(listed, LONG)) == 2 and len(rows_with(listed, BUILTIN_NAME)) == 2
    assert rows_with(listed, str(tmp_path / "runs" / LONG))  # the folder too
    assert len(rows_with(piped("runs", "compare", LONG, LONG + "-b"), LONG)) == 2
    assert lines_with(piped("runs", "show", LONG), str(tmp_path / "runs" / LONG))  # plain lines are not wrapped either


def test_a_narrow_terminal_folds_names_instead_of_cutting_them(store_home):
    from rich.console import Console
    from rich.table import Table

    from tunesmith.cli.common import print_table

    console = Console(width=30, force_terminal=True, color_system=None)
    table = Table("name", "path")
    table.add_row(BUILTIN_NAME, "/a/rather/long/path/to/the/model.gguf")
    with console.capture() as captured:
        print_table(table, console)
    rows = [line.split("│") for line in captured.get().splitlines() if line.count("│") == 3]
    assert "…" not in captured.get()
    assert "".join(cells[1].strip() for cells in rows) == BUILTIN_NAME  # whole, folded over lines
    assert "".join(cells[2].strip() for cells in rows) == "/a/rather/long/path/to/the/model.gguf"
