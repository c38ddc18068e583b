"""Training: finetune (the workflow), loop (explicit, over accelerate), batching, checkpoint, methods, progress;
packing and loss (the speed engineer's)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("finetune", "Run"):
        from tunesmith.train import finetune as module

        return getattr(module, name)
    raise AttributeError(f"module 'tunesmith.train' has no attribute {name!r}")
