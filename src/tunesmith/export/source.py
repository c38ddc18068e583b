"""What gets exported or served: a run's deliverable (LoRA adapter or full weights) or a plain model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError


@dataclass
class Source:
    """A servable model. `kind`: 'lora' (base + adapter in `final`), 'full' (weights in `final`), 'model'.

    `base_folder` is the local HF folder the weights start from (for 'full' and 'model' it is the
    model itself). `run_dir` is set for runs; `manifest` is the run's manifest (empty for models).
    """

    name: str
    kind: str
    base_spec: str
    base_folder: Path
    final: Path | None = None
    run_dir: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_folder(self) -> Path:
        """The HF folder whose weights are loaded first (the base for 'lora')."""
        return self.base_folder if self.kind == "lora" else (self.final or self.base_folder)

    @property
    def tokenizer_folder(self) -> Path:
        """A run's final/ carries the chat template it was trained with."""
        return self.final or self.base_folder


def resolve(spec: str | Path, *, allow_models: bool = True) -> Source:
    """A run (registered name or run folder), else a model spec (store name, HF folder, GGUF file)."""
    from tunesmith.runs.store import find_run

    try:
        run = find_run(spec)
    except RunError as run_error:
        if not allow_models:
            raise
        return _model_source(str(spec), run_error)
    return from_run(run)


def from_run(run) -> Source:
    """A Source for a RunInfo; RunError when the run has no final model."""
    from tunesmith.models import adapters
    from tunesmith.models.load import local_folder
    from tunesmith.runs.tuned import base_spec as run_base_spec

    final = run.dir / "final"
    is_lora = adapters.is_adapter_dir(final)
    if not is_lora and not (final / "config.json").is_file():
        raise RunError(f"run '{run.name}' has no final model ({final} is missing; status: {run.status})",
                       f"resume it with `tunesmith train --resume {run.name}` or train again")
    if is_lora:
        base_spec = run_base_spec(run)
        base_folder = local_folder(base_spec)
    else:
        base_spec, base_folder = run.base_model or str(final), final
    return Source(name=run.name, kind="lora" if is_lora else "full", base_spec=base_spec, base_folder=base_folder,
                  final=final, run_dir=run.dir, manifest=dict(run.manifest))


def _model_source(spec: str, run_error: RunError) -> Source:
    from tunesmith.errors import ModelError
    from tunesmith.models.load import local_folder
    from tunesmith.models.store import ModelStore

    try:
        entry = ModelStore().resolve(spec)
        folder = local_folder(entry)
    except ModelError as model_error:
        raise RunError(f"'{spec}' is neither a run nor a model ({run_error.message}; {model_error.message})",
                       run_error.hint or model_error.hint) from None
    return Source(name=entry.name, kind="model", base_spec=spec, base_folder=folder)


def load(source: Source, *, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) in memory, in eval mode: the reference every export is compared with."""
    from tunesmith.models import adapters
    from tunesmith.models.load import load_model, load_tokenizer

    model, _ = load_model(str(source.weights_folder), dtype=dtype)
    if source.kind == "lora":
        model = adapters.load_adapter(model, source.final)
    model.eval()
    return model, load_tokenizer(source.tokenizer_folder)
