"""What every CLI module shares: the console, small printing helpers and the options several commands take."""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.console import Console

# Piped output is not wrapped at COLUMNS: a long path or name stays on one line for grep and cut.
console = Console(highlight=False, soft_wrap=not (sys.stdout and sys.stdout.isatty()))
err_console = Console(stderr=True, highlight=False)


def print_table(table: Any, out: Console | None = None) -> None:
    """Print a rich Table without ever cutting a cell (rich ends a cell too wide with '...').

    Piped (not a terminal), the table is printed at its full width, each row on one line, so
    `tunesmith models list | grep NAME` finds whole names whatever COLUMNS says; on a
    terminal, a cell too wide for the screen folds onto the next lines instead.
    """
    from rich.measure import Measurement

    out = out or console
    for column in table.columns:
        column.overflow = "fold"
    if out.is_terminal:
        out.print(table)
        return
    width = Measurement.get(out, out.options.update_width(1 << 16), table).maximum
    Console(file=out.file, width=width, highlight=False, color_system=out.color_system).print(table)


def print_json(obj: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    from tunesmith.io import json_text

    sys.stdout.write(json_text(obj, indent=2, default=str) + "\n")


# The options `generate` and `chat` share (typer reads these defaults; one declaration each).
SYSTEM = typer.Option(None, "--system", help="system prompt")
MAX_NEW_TOKENS = typer.Option(256, "--max-new-tokens", help="longest answer in tokens")
TEMPERATURE = typer.Option(0.0, "--temperature", help="0 = greedy")
TOP_P = typer.Option(1.0, "--top-p", help="nucleus sampling threshold")
SEED = typer.Option(None, "--seed", help="seed for sampling")
DEVICE = typer.Option("auto", "--device", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N")


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """The sampling options `generate` and `chat` share: one clear error for out-of-range values."""
    from tunesmith.errors import ConfigError

    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError("--max-new-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]")
