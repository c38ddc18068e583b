"""`tunesmith chat RUN|MODEL`: a terminal chat with history and streamed answers."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from tunesmith.cli.common import check_sampling, console


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)


def chat_cmd(
    target: str = typer.Argument(..., help="a run (name or folder) or a model (store name, folder, GGUF file)"),
    system: Optional[str] = typer.Option(None, "--system", help="system prompt"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="longest answer in tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus sampling threshold"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed for sampling"),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N"),
) -> None:
    """Chat in the terminal; /reset clears the history, /system TEXT sets the system prompt, /exit quits."""
    from tunesmith.serve.chat import HELP, ChatSession, run_loop
    from tunesmith.serve.engine import Engine

    check_sampling(max_new_tokens, temperature, top_p)
    engine = Engine.load([target], device=device)
    name = engine.names[0]
    session = ChatSession(engine, name, max_new_tokens, temperature, top_p, seed, system)
    console.print(f"chatting with {name} ({HELP})", markup=False)
    interactive = sys.stdin.isatty()

    def read() -> str | None:
        try:
            return input("> " if interactive else "")
        except EOFError:
            return None

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    run_loop(session, read, write)
