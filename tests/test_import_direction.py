"""The tree is the architecture: lower layers never import higher ones (STYLE.md section 1)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"

# Layer of each top-level package/module; a module may import its own layer or lower ones.
LAYERS = {
    "errors": 0, "config": 0, "io": 0, "vendor": 0,  # vendor: third-party code, run as a child process
    "data": 1, "models": 1, "rag": 1, "runs": 1,
    "train": 2, "evaluate": 2, "export": 2, "advise": 2,
    "serve": 3, "ui": 3, "cli": 4,
}
# The one module allowed to import these heavy libraries (STYLE.md section 6); the web framework has
# two apps (the API server and the UI), each with its own web modules, and nothing else touches it.
WEB = ("serve/app.py", "serve/guards.py", "ui/app.py", "ui/web.py", "ui/guard.py", "ui/pages/*.py")
SEAMS = {"peft": ("models/adapters.py",), "fastapi": WEB, "starlette": WEB, "sqlite3": ("runs/registry.py",),
         "llama_cpp": ("models/llama_cpp.py",), "wandb": ("train/trackers.py",), "mlflow": ("train/trackers.py",),
         "tensorboard": ("train/trackers.py",)}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _layer(rel: Path) -> tuple[str, int | None]:
    top = rel.parts[0].removesuffix(".py")
    return top, LAYERS.get(top)


def test_every_package_has_a_layer():
    tops = {p.name.removesuffix(".py") for p in SRC.iterdir() if not p.name.startswith("_") and p.name != "assets"}
    tops.discard("py.typed")
    assert tops <= set(LAYERS), f"add {tops - set(LAYERS)} to LAYERS"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "__init__.py":
            continue
        top, layer = _layer(rel)
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "tunesmith" or len(parts) < 2:
                continue
            other = LAYERS.get(parts[1])
            if other is not None and layer is not None and other > layer:
                bad.append(f"{rel} imports {name}")
    assert bad == []


def test_heavy_libraries_enter_through_one_seam():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        for name in _imports(path):
            lib = name.split(".")[0]
            if lib in SEAMS and not any(fnmatch.fnmatch(rel, allowed) for allowed in SEAMS[lib]):
                bad.append(f"{rel} imports {lib} (only {', '.join(SEAMS[lib])} may)")
    assert bad == []
