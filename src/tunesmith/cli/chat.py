"""`tunesmith chat RUN|MODEL`: a terminal chat with history and streamed answers."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from tunesmith.cli.common import DEVICE, MAX_NEW_TOKENS, SEED, SYSTEM, TEMPERATURE, TOP_P, check_sampling, console


def register(app: typer.Typer) -> None:
    app.command("chat")(chat_cmd)


def chat_cmd(
    target: str = typer.Argument(..., help="a run (name or folder) or a model (store name, folder, GGUF file)"),
    system: Optional[str] = SYSTEM,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    seed: Optional[int] = SEED,
    device: str = DEVICE,
) -> None:
    """Chat in the terminal; /reset clears the history, /system TEXT sets the system prompt, /exit quits."""
    from tunesmith.serve.chat import HELP, ChatSession, run_loop
    from tunesmith.serve.engine import Engine

    check_sampling(max_new_tokens, temperature, top_p)
    engine = Engine.load([target], device=device, max_batch=1)  # one person: llama.cpp allocates a cache per sequence
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
