"""Shared by the server load and abuse tests: bench/serve_load.py as a module, and a small server to hit."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterator

from deploy_helpers import build_small_vocab_model, make_lora_run

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"
KEY = "abuse-test-key"
LIMITS = {"max_tokens_limit": 64, "max_body_bytes": 50_000}


def bench():
    """bench/serve_load.py imported as the module `serve_load` (once)."""
    if "serve_load" not in sys.modules:
        spec = importlib.util.spec_from_file_location("serve_load", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["serve_load"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["serve_load"]


@contextlib.contextmanager
def serving(root: Path) -> Iterator:
    """A LoRA run and its base behind an API key on 127.0.0.1 and a free port; stopped on exit."""
    import torch

    from tunesmith.config import ServeConfig
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine, Worker
    from tunesmith.serve.server import start_in_thread

    torch.set_num_threads(1)
    base = build_small_vocab_model(root / "base")
    run = make_lora_run(base, root / "run-a")
    engine = Engine.load([str(run)], base=str(base))
    worker = Worker(engine)
    server = start_in_thread(create_app(engine, ServeConfig(api_key=KEY, **LIMITS), worker))
    try:
        yield server
    finally:
        server.stop()
        worker.close()
