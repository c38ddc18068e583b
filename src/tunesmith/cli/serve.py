"""`tunesmith serve [RUN ...] [--base NAME]`: an OpenAI-compatible HTTP API over runs and a base model."""

from __future__ import annotations

from typing import List, Optional

import typer

from tunesmith.cli.common import err_console


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def serve_cmd(
    runs: Optional[List[str]] = typer.Argument(None, help="runs, GGUF exports or .gguf files to serve (names or folders); each is a model id"),
    base: Optional[str] = typer.Option(None, "--base", help="also serve this base model (default: the config's model when no run is given)"),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config whose serve.* and model keys apply"),
    host: Optional[str] = typer.Option(None, "--host", help="address to bind (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, "--port", help="port (default 8000)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="require 'Authorization: Bearer KEY'", envvar="TUNESMITH_API_KEY"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens-limit", help="largest max_tokens a request may ask"),
    device: Optional[str] = typer.Option(None, "--device", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N"),
    engine: Optional[str] = typer.Option(None, "--engine", help="auto (llama.cpp for GGUF exports and files) | torch | llamacpp"),
) -> None:
    """Serve runs (LoRA adapters share one base in memory) at /v1/chat/completions, /v1/completions, /v1/models."""
    from tunesmith.config import load_config, replace
    from tunesmith.serve.server import exposure_warning, serve

    cfg = load_config(config)
    changes = {k: v for k, v in {"host": host, "port": port, "api_key": api_key, "max_tokens_limit": max_tokens,
                                  "engine": engine}.items()
               if v is not None}
    serve_cfg = replace(cfg, serve=changes).serve
    base = base or (None if runs else cfg.model.name)
    warning = exposure_warning(serve_cfg)
    if warning:
        err_console.print(f"[bold yellow]warning:[/] {warning}")
    err_console.print(f"loading {', '.join([*(runs or []), *([base] if base else [])])} ...", markup=False)

    def ready(names: list[str]) -> None:
        err_console.print(f"serving {', '.join(names)} on http://{serve_cfg.host}:{serve_cfg.port}/v1 "
                          "(Ctrl-C stops)", markup=False)

    serve(runs or [], base, serve_cfg, on_ready=ready, device=device or cfg.model.device)
