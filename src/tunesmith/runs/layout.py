"""The run folder: where each file lives, the manifest, and the metrics log."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from tunesmith.errors import RunError
from tunesmith.io import atomic_write_json, json_text

STATUSES = ("running", "completed", "failed", "stopped")
# Stamped into every manifest tunesmith writes: `runs rm PATH` deletes only folders that carry it.
MARKER = {"created_by": "tunesmith", "layout_version": 1}
# Everything tunesmith puts at the top of a run folder (report.* come from `tunesmith eval`;
# tensorboard, wandb and mlruns from the trackers of train.log_to, train/trackers.py).
ENTRIES = frozenset({"config.yaml", "manifest.json", "metrics.jsonl", "data", "checkpoints", "final", "tensorboard",
                     "wandb", "mlruns", "report.json", "report.html", "train.lock", "reference_logps.json"})


@dataclass(frozen=True)
class RunPaths:
    """Every path inside `<output_dir>/<run-name>/`."""

    dir: Path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def final(self) -> Path:
        return self.dir / "final"

    @property
    def tensorboard(self) -> Path:
        return self.dir / "tensorboard"

    @property
    def lock(self) -> Path:
        return self.dir / "train.lock"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step}"


def is_marked(manifest: dict[str, Any]) -> bool:
    """Whether tunesmith wrote this manifest (runs made before the marker have none)."""
    return manifest.get("created_by") == MARKER["created_by"]


def foreign_entries(paths: RunPaths) -> list[str]:
    """Names at the top of the run folder that tunesmith did not put there, sorted."""
    return sorted(p.name for p in paths.dir.iterdir() if not _ours(p.name))


def _ours(name: str) -> bool:
    if name in ENTRIES:
        return True
    # the leftovers of an interrupted atomic write: .<entry>.<random>.tmp and .<entry>.old
    inner = name[1:] if name.startswith(".") else ""
    return any(inner == f"{e}.old" or (inner.startswith(f"{e}.") and inner.endswith(".tmp")) for e in ENTRIES)


def new_run_name(method: str, output_dir: Path) -> str:
    """`<yyyymmdd-hhmmss>-<method>`, with a counter when that folder already exists."""
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{method}"
    name, n = base, 1
    while (output_dir / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def read_manifest(paths: RunPaths) -> dict[str, Any]:
    if not paths.manifest.is_file():
        raise RunError(f"{paths.dir} is not a run folder: manifest.json is missing")
    try:
        return json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"{paths.manifest} is unreadable ({e})", "the run folder is damaged; train again") from None


def write_manifest(paths: RunPaths, manifest: dict[str, Any]) -> None:
    """Rewrite manifest.json atomically; `status` must be one of STATUSES. Adds MARKER (to `manifest` too)."""
    assert manifest.get("status") in STATUSES, manifest.get("status")
    manifest.update(MARKER)
    atomic_write_json(paths.manifest, manifest)


def update_manifest(paths: RunPaths, **fields: Any) -> dict[str, Any]:
    manifest = {**read_manifest(paths), **fields}
    write_manifest(paths, manifest)
    return manifest


def append_metrics(paths: RunPaths, rows: list[dict[str, Any]]) -> None:
    """Append JSON lines; each line is one write, so a crash loses at most the last line."""
    with open(paths.metrics, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json_text(row) + "\n")
        f.flush()


def read_metrics(paths: RunPaths) -> list[dict[str, Any]]:
    """Every complete metrics line (a torn last line from a crash is skipped)."""
    if not paths.metrics.is_file():
        return []
    return metric_rows(paths.metrics.read_bytes().split(b"\n"))


def metric_rows(lines: Iterable[bytes | str]) -> list[dict[str, Any]]:
    """The metrics rows among `lines` (of metrics.jsonl): one that is not JSON (torn by a crash) is skipped.
    The one parser of metrics lines: read_metrics and the UI's live tail (ui/pages/runs.py) share it."""
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
    return rows


def truncate_metrics(paths: RunPaths, after_step: int) -> None:
    """Drop metric lines past `after_step` (a resumed run logs those steps again)."""
    rows = [r for r in read_metrics(paths) if r.get("step", 0) <= after_step]
    from tunesmith.io import atomic_write_jsonl

    atomic_write_jsonl(paths.metrics, rows)
