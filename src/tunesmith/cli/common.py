"""What every CLI module shares: the console and small printing helpers."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    from tunesmith.io import json_text

    sys.stdout.write(json_text(obj, indent=2, default=str) + "\n")


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    """The sampling options `generate` and `chat` share: one clear error for out-of-range values."""
    from tunesmith.errors import ConfigError

    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ConfigError("--max-new-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]")
