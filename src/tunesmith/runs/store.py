"""Finding runs by name or folder, listing and removing them (the registry indexes the run folders)."""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError
from tunesmith.runs import registry
from tunesmith.runs.layout import RunPaths, read_manifest


@dataclass
class RunInfo:
    """What is known of a run; `manifest` is the run folder's manifest.json."""

    name: str
    dir: Path
    status: str
    base_model: str | None
    base_model_path: str | None
    method: str | None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.dir)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {"name": self.name, "dir": str(self.dir), "status": self.status, "base_model": self.base_model,
                "method": self.method, "best_val_loss": m.get("best_val_loss"), "best_step": m.get("best_step"),
                "steps": m.get("steps"), "created_at": m.get("created_at"),
                "final": str(self.dir / "final") if (self.dir / "final").is_dir() else None}


def info_from_dir(run_dir: Path) -> RunInfo:
    manifest = read_manifest(RunPaths(run_dir))
    return RunInfo(name=manifest.get("name", run_dir.name), dir=run_dir.resolve(), status=manifest.get("status", "?"),
                   base_model=manifest.get("base_model"), base_model_path=manifest.get("base_model_path"),
                   method=manifest.get("method"), manifest=manifest)


def find_run(name_or_path: str | Path | RunInfo) -> RunInfo:
    """A run by registered name or by folder; RunError naming the known runs otherwise."""
    if isinstance(name_or_path, RunInfo):
        return name_or_path
    path = Path(name_or_path).expanduser()
    if (path / "manifest.json").is_file():
        return info_from_dir(path)
    row = registry.get(str(name_or_path))
    if row is not None:
        if not (Path(row["dir"]) / "manifest.json").is_file():
            raise RunError(f"run '{name_or_path}' is registered but its folder {row['dir']} is gone",
                           f"`tunesmith runs rm {name_or_path}` forgets it")
        return info_from_dir(Path(row["dir"]))
    names = [r["name"] for r in registry.rows()]
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    if close:
        hint = f"did you mean '{close[0]}'?"
    else:
        hint = f"known runs: {', '.join(names[:10])}" if names else "no runs yet: `tunesmith train CONFIG.yaml` makes one"
    raise RunError(f"unknown run '{name_or_path}'", hint)


def list_runs() -> list[RunInfo]:
    """Every registered run, newest first; the folder's manifest wins over the registry's copy."""
    out = []
    for row in registry.rows():
        run_dir = Path(row["dir"])
        if (run_dir / "manifest.json").is_file():
            try:
                out.append(info_from_dir(run_dir))
                continue
            except RunError:
                pass
        out.append(RunInfo(name=row["name"], dir=run_dir, status="missing", base_model=row["base_model"],
                           base_model_path=None, method=row["method"], manifest={}))
    return out


def register_run(run_dir: Path, manifest: dict[str, Any]) -> None:
    registry.record(manifest["name"], run_dir.resolve(), manifest)


def remove_run(name_or_path: str | Path) -> RunInfo:
    """Delete a run's folder and forget it; a registered run whose folder is gone is just forgotten."""
    row = registry.get(str(name_or_path))
    if row is not None and not (Path(row["dir"]) / "manifest.json").is_file():
        registry.delete(row["name"])
        return RunInfo(row["name"], Path(row["dir"]), "missing", row["base_model"], None, row["method"])
    run = find_run(name_or_path)
    if run.status == "running":
        raise RunError(f"run '{run.name}' is marked running", "stop it first (or, if it crashed, delete its folder by hand)")
    shutil.rmtree(run.dir)
    registry.delete(run.name)
    return run
