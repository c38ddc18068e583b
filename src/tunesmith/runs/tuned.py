"""Loading a run's deliverable: the base model plus its adapter, or the fully fine-tuned weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import RunError
from tunesmith.runs.store import RunInfo, find_run


def load_tuned(run: str | Path | RunInfo, *, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from the run's `final/` folder; the tokenizer carries the trained chat template."""
    from tunesmith.models import adapters
    from tunesmith.models.load import load_model, load_tokenizer

    info = find_run(run)
    final = info.dir / "final"
    if not (final / "config.json").is_file() and not adapters.is_adapter_dir(final):
        raise RunError(f"run '{info.name}' has no final model ({final} is missing; status: {info.status})",
                       f"resume it with `tunesmith train --resume {info.name}` or train again")
    if not adapters.is_adapter_dir(final):
        model, tok = load_model(str(final), dtype=dtype)
        return model, tok
    base, _ = load_model(base_spec(info), dtype=dtype)
    model = adapters.load_adapter(base, final)
    model.eval()
    return model, load_tokenizer(final)


def base_spec(info: RunInfo) -> str:
    """The base model's local folder as recorded, else the spec the user gave (re-resolved)."""
    path = info.base_model_path
    if path and (Path(path) / "config.json").is_file():
        return path
    if info.base_model:
        return info.base_model
    raise RunError(f"run '{info.name}' does not record its base model", "its manifest.json is incomplete")
