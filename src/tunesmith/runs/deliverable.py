"""THE deliverable: what a run (or a model spec) gives every consumer: evaluation, export, serve, chat, generate.

`resolve(spec)` turns a registered run name, a run folder, a store name, a model folder or a GGUF
file into a Deliverable; `.load(device=..., dtype=..., merge=...)` puts it in memory. No other
module decides where a run's weights are or how its adapter goes on its base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError


@dataclass
class Deliverable:
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

    @property
    def system(self) -> str | None:
        """The system prompt the run trained with (`data.system` in its saved config.yaml); None for models."""
        return run_system(self.run_dir) if self.run_dir else None

    def tokenizer(self):
        """The tokenizer every consumer prompts with: the trained chat template, the run's system prompt its default.

        serve, chat, generate, evaluation and every export get it here, so a conversation without a
        system message is prompted as training rendered it (see render.with_system_template).
        """
        from tunesmith.data.render import with_system_template
        from tunesmith.models.load import load_tokenizer

        tok = load_tokenizer(self.tokenizer_folder)
        with_system_template(tok, self.system)
        return tok

    def load(self, *, device: str | None = "auto", dtype: str = "auto", merge: bool = False) -> tuple[Any, Any]:
        """(model, tokenizer) in memory, in eval mode; the tokenizer carries the chat template it was trained with.

        device 'auto' = a CUDA GPU when present, else the CPU (dtype 'auto' follows: bf16 on CUDA,
        float32 on the CPU). `merge` folds a LoRA adapter into this copy of the base (faster to
        generate with; the base weights on disk are untouched).
        """
        from tunesmith.models import adapters
        from tunesmith.models.load import load_model

        model, _ = load_model(str(self.weights_folder), dtype=dtype, device=device)
        if self.kind == "lora":
            model = adapters.load_adapter(model, self.final)
            if merge:
                model = adapters.merge(model)
        model.eval()
        return model, self.tokenizer()


def run_system(run_dir: Path) -> str | None:
    """`data.system` in a run folder's config.yaml, or None; reads no weights (the web UI presets its chat with it)."""
    from tunesmith.config import load_run_config
    from tunesmith.errors import ConfigError

    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        return None
    try:
        return load_run_config(config).data.system or None
    except ConfigError:  # a config this version cannot read: the template's own default stands
        return None


def load_run(run, **load_args) -> tuple[Any, Any]:
    """A run's deliverable in memory: `resolve(run, allow_models=False).load(**load_args)`."""
    return resolve(run, allow_models=False).load(**load_args)


def resolve(spec, *, allow_models: bool = True) -> Deliverable:
    """A run (registered name or run folder), else a model spec (store name, HF folder, GGUF file)."""
    from tunesmith.runs.store import RunInfo, find_run

    if isinstance(spec, Deliverable):
        return spec
    try:
        run = spec if isinstance(spec, RunInfo) else find_run(spec)
    except RunError as run_error:
        if not allow_models:
            raise
        return _model_source(str(spec), run_error)
    return from_run(run)


def from_run(run) -> Deliverable:
    """The Deliverable of a RunInfo; RunError when the run has no final model."""
    from tunesmith.models import adapters
    from tunesmith.models.load import local_folder

    final = run.dir / "final"
    is_lora = adapters.is_adapter_dir(final)
    if not is_lora and not (final / "config.json").is_file():
        raise RunError(f"run '{run.name}' has no final model ({final} is missing; status: {run.status})",
                       f"resume it with `tunesmith train --resume {run.name}` or train again")
    if is_lora:
        spec = base_spec(run)
        base_folder = local_folder(spec)
    else:
        spec, base_folder = run.base_model or str(final), final
    return Deliverable(name=run.name, kind="lora" if is_lora else "full", base_spec=spec, base_folder=base_folder,
                       final=final, run_dir=run.dir, manifest=dict(run.manifest))


def base_spec(info) -> str:
    """A run's base model: its local folder as recorded, else the spec the user gave (re-resolved)."""
    path = info.base_model_path
    if path and (Path(path) / "config.json").is_file():
        return path
    if info.base_model:
        return info.base_model
    raise RunError(f"run '{info.name}' does not record its base model", "its manifest.json is incomplete")


def _model_source(spec: str, run_error: RunError) -> Deliverable:
    from tunesmith.errors import ModelError
    from tunesmith.models.load import local_folder
    from tunesmith.models.store import ModelStore

    try:
        entry = ModelStore().resolve(spec)
        folder = local_folder(entry)
    except ModelError as model_error:
        raise RunError(f"'{spec}' is neither a run nor a model ({run_error.message}; {model_error.message})",
                       run_error.hint or model_error.hint) from None
    return Deliverable(name=entry.name, kind="model", base_spec=spec, base_folder=folder)
