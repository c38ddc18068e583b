"""Finding runs by name or folder, listing and removing them (the registry indexes the run folders)."""

from __future__ import annotations

import difflib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError
from tunesmith.io import some_names
from tunesmith.runs import lock, registry
from tunesmith.runs.layout import RunPaths, foreign_entries, is_marked, read_manifest


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
    """A run by registered name first, else by folder; RunError naming the known runs otherwise.

    A `Path` is only ever a folder. Names come first so that a folder in the working directory
    that happens to share a run's name never stands in for it.
    """
    if isinstance(name_or_path, RunInfo):
        return name_or_path
    row = registry.get(name_or_path) if isinstance(name_or_path, str) else None
    if row is not None:
        if not (Path(row["dir"]) / "manifest.json").is_file():
            raise RunError(f"run '{name_or_path}' is registered but its folder {row['dir']} is gone",
                           f"`tunesmith runs rm {name_or_path}` forgets it")
        return info_from_dir(Path(row["dir"]))
    path = Path(name_or_path).expanduser()
    if (path / "manifest.json").is_file():
        return info_from_dir(path)
    raise _unknown(str(name_or_path))


def _unknown(name: str, hint: str | None = None) -> RunError:
    """'unknown run' with `hint`, or else the nearest known name, or the known names."""
    if hint is None:
        names = [r["name"] for r in registry.rows()]
        close = difflib.get_close_matches(name, names, n=1)
        hint = (f"did you mean '{close[0]}'?" if close else f"known runs: {', '.join(names[:10])}" if names
                else "no runs yet: `tunesmith train CONFIG.yaml` makes one")
    return RunError(f"unknown run '{name}'", hint)


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


def is_path_form(spec: str) -> bool:
    """`runs rm` takes a folder only when it is written as one: with a '/', or starting with '.' or '~'."""
    return "/" in spec or os.sep in spec or spec.startswith((".", "~"))


def removal_target(spec: str | Path) -> RunInfo:
    """The run `runs rm SPEC` would delete, checked; nothing is changed.

    SPEC is a registered name, or a folder in path form (`is_path_form`; a `Path` always is). The
    folder must hold a run's layout (config.yaml and manifest.json) and nothing tunesmith did not
    put there; a folder no registered run lives in must also carry tunesmith's marker in its
    manifest (registered runs are tunesmith's even when they predate the marker). A registered run
    whose folder is gone comes back with status 'missing' (removing it just forgets the name).
    RunError otherwise.
    """
    row = registry.get(spec) if isinstance(spec, str) else None
    if row is not None and not (Path(row["dir"]) / "manifest.json").is_file():
        return RunInfo(row["name"], Path(row["dir"]), "missing", row["base_model"], None, row["method"])
    if row is not None:
        run = info_from_dir(Path(row["dir"]))
        if run.name != row["name"]:
            raise RunError(f"run '{spec}' is registered at {run.dir}, but that folder now holds run '{run.name}'",
                           "nothing was removed; check the folder, and delete it by hand if it is no longer needed")
    elif isinstance(spec, Path) or is_path_form(spec):
        run = _run_in_folder(Path(spec).expanduser())
    elif Path(spec).is_dir():
        raise _unknown(spec, f"to remove the folder ./{spec}, write it as a path: `tunesmith runs rm ./{spec}`")
    else:
        raise _unknown(spec)
    _check_removable(run)
    return run


def _run_in_folder(folder: Path) -> RunInfo:
    """The run in `folder`, given by path: registered there, or carrying tunesmith's marker."""
    if not (folder / "manifest.json").is_file():
        raise RunError(f"{folder} is not a run folder (it has no manifest.json); nothing was removed")
    run = info_from_dir(folder)
    if not is_marked(run.manifest) and not _registered_here(run):
        raise RunError(f"{folder} is not a run tunesmith made (its manifest.json has no created_by marker, and no "
                       "registered run lives there); nothing was removed", "delete it by hand if you are sure")
    return run


def _registered_here(run: RunInfo) -> bool:
    """Whether the registry's entry for `run.name` is this very folder (a copy elsewhere has its own)."""
    row = registry.get(run.name)
    return row is not None and Path(row["dir"]).resolve() == run.dir.resolve()


def _check_removable(run: RunInfo) -> None:
    if not run.paths.config.is_file():
        raise RunError(f"{run.dir} does not look like a run folder (config.yaml is missing); nothing was removed",
                       "delete it by hand if you are sure")
    foreign = foreign_entries(run.paths)
    if foreign:
        raise RunError(f"run folder {run.dir} holds what tunesmith did not put there: {some_names(foreign)}; "
                       "nothing was removed",
                       "move those out first, then `tunesmith runs rm` again")
    if run.status == "running" and not run.paths.lock.is_file():
        # Made before run locks: nothing tells a live training process from a crashed one.
        raise RunError(f"run '{run.name}' is marked running", "stop it first (or, if it crashed, delete its folder by hand)")


def remove_run(spec: str | Path) -> RunInfo:
    """Delete the run `removal_target(spec)` finds and forget it, holding the run's lock while deleting.

    A run that a process is training (its lock is held) is refused; one marked running whose
    process is gone (killed) is removed.
    """
    run = removal_target(spec)
    if run.status == "missing":
        registry.delete(run.name)
        return run
    registered = _registered_here(run)
    with lock.hold(run.paths):
        shutil.rmtree(run.dir)
    if registered:  # never another folder's entry of the same name
        registry.delete(run.name)
    return run
