"""`tunesmith generate`: one answer from a model, streamed to the terminal."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from tunesmith.cli.common import check_sampling


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)


def generate_cmd(
    prompt: str = typer.Argument(..., help="the user's message"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="store name, model folder or GGUF file"),
    system: Optional[str] = typer.Option(None, "--system", help="system prompt"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="longest answer in tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus sampling threshold"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for sampling"),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N"),
) -> None:
    """Answer one prompt with a model, through its chat template, streaming the tokens."""
    from tunesmith.models.engine import Sampling
    from tunesmith.models.generate import stream_chat
    from tunesmith.models.load import load_model

    check_sampling(max_new_tokens, temperature, top_p)
    m, tok = load_model(model, device=device)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    for piece in stream_chat(m, tok, messages, Sampling(max_new_tokens, temperature, top_p, seed)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
