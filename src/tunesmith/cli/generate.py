"""`tunesmith generate`: one answer from a model, streamed to the terminal."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from tunesmith.cli.common import DEVICE, MAX_NEW_TOKENS, SEED, SYSTEM, TEMPERATURE, TOP_P, check_sampling


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)


def generate_cmd(
    prompt: str = typer.Argument(..., help="the user's message"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                              help="a run (name or folder) or a model (store name, folder, GGUF file)"),
    system: Optional[str] = SYSTEM,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    seed: Optional[int] = SEED,
    device: str = DEVICE,
) -> None:
    """Answer one prompt with a run or a model, through its chat template (a run's system prompt is the default)."""
    from tunesmith.models.engine import Sampling
    from tunesmith.models.generate import stream_chat
    from tunesmith.runs.deliverable import resolve

    check_sampling(max_new_tokens, temperature, top_p)
    m, tok = resolve(model).load(device=device)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    for piece in stream_chat(m, tok, messages, Sampling(max_new_tokens, temperature, top_p, seed)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
