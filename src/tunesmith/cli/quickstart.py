"""`tunesmith quickstart`: the whole path on the embedded model and the bundled example."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart_cmd)


def quickstart_cmd() -> None:
    """Check the bundled example data, then answer one of its questions with the embedded model."""
    import json
    import time
    from pathlib import Path

    from tunesmith.cli.common import console
    from tunesmith.errors import DataError
    from tunesmith.models.generate import SamplingParams, chat
    from tunesmith.models.load import load_model

    start = time.time()
    data = Path("examples/support-faq/faq.jsonl")
    if not data.is_file():
        raise DataError(f"bundled example not found: {data}", "run quickstart from the repository root")
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    console.print(f"[1/2] example data: {data} ({len(rows)} rows)")
    model, tok = load_model("smollm2-135m-instruct")
    question = rows[0]["instruction"]
    console.print(f"[2/2] base model answers: {question}")
    console.print(chat(model, tok, [{"role": "user", "content": question}], SamplingParams(max_new_tokens=80)))
    console.print(f"[dim]training is not wired into quickstart yet; done in {time.time() - start:.1f} s[/]")
