"""What an export says about its base model: a portable name, its license, dtype, local folder and weights' sha256."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.io import read_json_object
from tunesmith.runs.deliverable import Deliverable

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # 'HuggingFaceTB/SmolLM2-135M-Instruct'
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BaseModel:
    """`name` is portable (a hub id or store name, never a local path); `folder` and `sha256` are this machine's."""

    name: str
    license: str
    folder: Path
    sha256: str | None
    dtype: str


def base_model(source: Deliverable) -> BaseModel:
    """The base of `source`: for a LoRA run the model under the adapter, for a full run the one it started from.

    name: the base's config `_name_or_path` when it is a hub id, else the spec the run was given
    when that is not a path (a store name), else the folder's name. license: the base README's
    front matter, else the GGUF it was converted from (`general.license`), else 'other'. dtype:
    see `weights_dtype`.
    """
    folder = _original_folder(source)
    config = read_json_object(folder / "config.json")
    spec = source.manifest.get("base_model") or source.base_spec
    if HUB_ID.match(str(config.get("_name_or_path") or "")) and not Path(config["_name_or_path"]).exists():
        name = config["_name_or_path"]
    elif spec and not _is_path(spec):
        name = spec
    else:
        name = source.name if source.kind == "model" and not _is_path(source.name) else folder.name
    return BaseModel(name, _license(folder), folder, source.manifest.get("base_model_sha256"), weights_dtype(config))


def weights_dtype(config: dict) -> str:
    """The dtype the base's weights are stored in: its config's `dtype` (`torch_dtype` before transformers 4.56),
    float32 when it names none (a GGUF base is converted to a float32 folder, whose config says so)."""
    value = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return value if value in DTYPES else "float32"


def _original_folder(source: Deliverable) -> Path:
    """A full run's final/ is the tuned model; the base is the folder its manifest records, when still there."""
    recorded = source.manifest.get("base_model_path")
    if source.kind == "full" and recorded and (Path(recorded) / "config.json").is_file():
        return Path(recorded)
    return source.base_folder


def _is_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.endswith(".gguf") or Path(spec).exists()


def _license(folder: Path) -> str:
    return _readme_license(folder / "README.md") or _gguf_license(folder) or "other"


def _readme_license(readme: Path) -> str | None:
    import yaml

    try:
        text = readme.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def _gguf_license(folder: Path) -> str | None:
    """A GGUF base's converted folder records its source file (tunesmith_source.json)."""
    gguf_path = read_json_object(folder / "tunesmith_source.json").get("gguf")
    if not gguf_path or not Path(gguf_path).is_file():
        return None
    from tunesmith.errors import ModelError
    from tunesmith.models.load import gguf_fields

    try:
        value = gguf_fields(gguf_path).get("general.license")
    except ModelError:  # an unreadable header: the license is just not known
        return None
    return str(value) if value is not None else None
