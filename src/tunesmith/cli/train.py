"""`tunesmith train CONFIG.yaml [--set k=v] [--name NAME] [--resume RUN]`: fine-tune, a thin shell over finetune()."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from tunesmith.config import keys_help

SET_HELP = "override a key, e.g. --set train.lr=1e-4 (repeatable); `tunesmith config keys` lists them"


def register(app: typer.Typer) -> None:
    app.command("train", epilog="Keys:\n\n" + keys_help().replace("\n", "\n\n"))(train_cmd)


def train_cmd(
    config: Optional[Path] = typer.Argument(None, help="YAML config (without one: the defaults and --set; with --resume: the run's own)"),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    name: Optional[str] = typer.Option(None, "--name", help="run name (default: <date>-<time>-<method>)"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue a stopped run (name or folder) from its last checkpoint"),
    json_out: bool = typer.Option(False, "--json", help="print the run's record as JSON at the end"),
) -> None:
    """Fine-tune a model on your examples; prints the run's name and folder, a plan, progress and a summary."""
    from tunesmith.cli.common import console, print_json
    from tunesmith.errors import ConfigError
    from tunesmith.runs.store import find_run
    from tunesmith.train.finetune import finetune

    if resume and name:
        raise ConfigError("--name and --resume do not go together: a resumed run keeps its name")
    run = finetune(config, overrides=tuple(set_), name=name, resume=resume)
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch / torchrun, one process reports
        return
    if json_out:
        return print_json(find_run(run.dir).to_dict() | {"summary": run.summary})
    console.print(f"run {run.name} {run.status}: {run.dir}", markup=False)
