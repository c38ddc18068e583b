"""tunesmith: check your data, fine-tune a model on it, prove it beat the base model, deploy it.

The Python API mirrors the CLI; heavy modules load on first use so `import tunesmith` is instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from tunesmith.config import Config, load_config  # noqa: E402
from tunesmith.errors import TunesmithError  # noqa: E402

_LAZY = {
    "load_model": ("tunesmith.models.load", "load_model"),
    "load_run": ("tunesmith.runs.deliverable", "load_run"),
    "ModelStore": ("tunesmith.models.store", "ModelStore"),
    "generate": ("tunesmith.models.generate", "generate"),
    "Sampling": ("tunesmith.models.engine", "Sampling"),
    "compare": ("tunesmith.evaluate", "compare"),
    "finetune": ("tunesmith.train.finetune", "finetune"),
    "build_pairs": ("tunesmith.data.pairs", "build_pairs"),
    "PairOptions": ("tunesmith.data.pairs", "PairOptions"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'tunesmith' has no attribute {name!r}")


__all__ = ["Config", "TunesmithError", "load_config", *_LAZY]
