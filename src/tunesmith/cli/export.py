"""`tunesmith export RUN --format adapter|merged|gguf --out DIR`: a verified export with a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tunesmith.cli.common import console, err_console, print_json


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)


def export_cmd(
    run: str = typer.Argument(..., help="run name or run folder (a model store name or folder also works)"),
    fmt: str = typer.Option(..., "--format", "-f", help="adapter | merged | gguf"),
    out: Path = typer.Option(..., "--out", "-o", help="folder to create (an existing one must be empty, or a previous export and --overwrite)"),
    quant: str = typer.Option("q4_k_m", "--quant", help="GGUF types, comma-separated: f32, bf16, f16, q8_0, q6_k, "
                              "q5_k_m, q4_k_m, q4_0"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="merged: float32 | bfloat16 | float16 (default: the base model's dtype)"),
    prompts: int = typer.Option(4, "--verify-prompts", help="held-out prompts compared after reloading"),
    tokens: int = typer.Option(32, "--verify-tokens", help="greedy tokens generated per prompt when verifying"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out when it holds a previous export, and only then"),
    json_out: bool = typer.Option(False, "--json", help="print the verification as JSON"),
) -> None:
    """Export a run, reload the export, and check it answers like the tuned model before reporting done."""
    from tunesmith.errors import ConfigError
    from tunesmith.export import export

    if prompts < 1 or tokens < 1:
        raise ConfigError("--verify-prompts and --verify-tokens must be >= 1")
    say = (lambda s: err_console.print(s, markup=False)) if json_out else (lambda s: console.print(s, markup=False))
    result = export(run, fmt, out, quants=tuple(quant.split(",")), n_prompts=prompts, max_new_tokens=tokens,
                    overwrite=overwrite, dtype=dtype, say=say)
    if json_out:
        return print_json({"out": str(result.out), "format": result.format, "files": result.files,
                           "verification": result.verification})
    for c in result.verification["checks"]:
        console.print(_line(c), markup=False)
    console.print(f"exported '{result.verification['source']}' as {fmt} to {result.out} "
                  f"({', '.join(result.files)})", markup=False)


def _line(c: dict) -> str:
    what = f" {c['file']}" if c.get("file") else ""
    if c.get("status") == "skipped":
        return f"  {c['loader']}{what}: skipped ({c.get('reason')})"
    top1 = f", teacher-forced top-1 {c['teacher_forced_top1']}" if "teacher_forced_top1" in c else ""
    note = "" if c["status"] == "match" else " (the saved weights are rounded: answers may drift slightly)"
    return (f"  {c['loader']}{what}: {c['status']}: {c['exact_matches']}/{c['prompts']} answers identical, "
            f"token agreement {c['token_agreement']}{top1}{note}")
