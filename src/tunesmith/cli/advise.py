"""`tunesmith advise`: prompt engineering, RAG, fine-tuning or both, with the reasons and the next command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli.common import console, print_json


def register(app: typer.Typer) -> None:
    app.command("advise")(advise_cmd)


def advise_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="your example file (checked for size and quality)"),
    changes_often: bool = typer.Option(False, "--changes-often", help="the information the model needs changes often"),
    goal: Optional[str] = typer.Option(None, "--goal", help="style | format | knowledge | behaviour"),
    budget: Optional[str] = typer.Option(None, "--budget", help="low | medium | high"),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Recommend prompt engineering, RAG, fine-tuning, or fine-tuning + RAG, and say why."""
    from tunesmith.advise import advise
    from tunesmith.errors import DataError

    if data is not None and not data.exists():
        raise DataError(f"no such file: {data}", "check the path")
    advice = advise(data, changes_often=changes_often, goal=goal, budget=budget)
    if json_out:
        return print_json(advice.to_dict())
    label = {"prompt": "prompt engineering", "rag": "RAG (retrieval-augmented generation)",
             "fine-tune": "fine-tuning", "fine-tune+rag": "fine-tuning + RAG"}[advice.recommendation]
    console.print(f"[bold]recommendation: {label}[/]")
    for reason in advice.reasons:
        console.print(f"  - {reason}", markup=False)
    console.print("next:")
    for command in advice.next_commands:  # file names may hold [ ], which rich would take for markup
        console.print(f"  $ {command}", markup=False, soft_wrap=True)
