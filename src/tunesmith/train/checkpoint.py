"""Checkpoints: trainable weights + optimizer + scheduler + RNG + loop state, written atomically and verified.

A checkpoint is a folder `checkpoints/step-N/`:
    trainable.safetensors   every trainable parameter by name (LoRA weights, or all weights), whole
    optimizer.pt            optimizer state dict (tensors and numbers only: loaded with weights_only)
    sharded/                instead of optimizer.pt under FSDP / DeepSpeed: every process's shard of
                            the model and optimizer, as accelerate's save_state writes them
    scheduler.pt            learning-rate scheduler state dict
    rng.pt                  torch (and CUDA) RNG state of every process
    trainer_state.json      loop state (step, best validation loss, patience...) and python RNG
    checkpoint.json         written last: step, and the sha256 of every file above

It is written into a temp folder that is renamed to step-N only when complete, so a crash or a
full disk never leaves a half-written checkpoint where `latest()` would find it. The shards are
written by every process into `staging(root, N)` first (a temp folder too), then moved inside.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from tunesmith.errors import RunError, TrainError
from tunesmith.io import atomic_dir, is_disk_full, sha256_file

MANIFEST = "checkpoint.json"
FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")
SHARDED = "sharded"


def trainable_state(model) -> dict:
    """name -> tensor for every trainable parameter (a cloned, contiguous CPU copy)."""
    return {n: p.detach().to("cpu").clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def staging(root: Path, step: int) -> Path:
    """The temp folder every process writes its shards of checkpoint step-N into (swept like the others)."""
    return root / f".step-{step}.{SHARDED}.tmp"


def save(folder: Path, *, weights: dict, optimizer_state: dict | None, scheduler_state: dict, rng_states: list[dict],
         loop_state: dict, extra: dict | None = None, shards: Path | None = None) -> Path:
    """Write a complete checkpoint to `folder` (atomically; an existing one is replaced).

    `shards`: a folder of accelerate's save_state (FSDP / DeepSpeed), moved in as sharded/ and checksummed
    file by file; the optimizer's state is there, so `optimizer_state` is None.
    """
    import torch
    from safetensors.torch import save_file

    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            if shards is not None:
                os.replace(shards, tmp / SHARDED)
            save_file(weights, str(tmp / "trainable.safetensors"))
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / "optimizer.pt")
            torch.save(scheduler_state, tmp / "scheduler.pt")
            torch.save(rng_states, tmp / "rng.pt")
            state = {"loop": loop_state, "python_rng": _python_rng(), **(extra or {})}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str))
            sums = {name: sha256_file(tmp / name) for name in _files(tmp)}
            (tmp / MANIFEST).write_text(json.dumps({"step": loop_state["step"], "files": sums,
                                                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    except OSError as e:
        if is_disk_full(e):
            raise TrainError(f"disk full while saving checkpoint {folder.name}; nothing half-written was kept",
                             "free some space, then `tunesmith train --resume RUN` continues from the last checkpoint") from None
        raise
    return folder


def step_of(folder: Path) -> int | None:
    name = folder.name
    if not name.startswith("step-") or not name[5:].isdigit():
        return None
    return int(name[5:])


def complete(root: Path) -> list[Path]:
    """Checkpoint folders with a manifest, oldest first (temp folders start with '.' and never match)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if step_of(p) is not None and (p / MANIFEST).is_file()]
    return sorted(found, key=step_of)


def latest(root: Path) -> Path | None:
    done = complete(root)
    return done[-1] if done else None


def verify(folder: Path) -> dict:
    """Check every file against the checksums in checkpoint.json; RunError naming the first bad one."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"checkpoint {folder} is corrupt: {MANIFEST} is unreadable ({e})", _corrupt_hint(folder)) from None
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise RunError(f"checkpoint {folder} is corrupt: {name} is missing", _corrupt_hint(folder))
        if sha256_file(path) != digest:
            raise RunError(f"checkpoint {folder} is corrupt: {name} does not match its checksum", _corrupt_hint(folder))
    return manifest


def load(folder: Path) -> dict[str, Any]:
    """A verified checkpoint's contents: weights, optimizer, scheduler, rng (list per process), state."""
    import torch
    from safetensors.torch import load_file

    verify(folder)
    readers = {"trainer_state.json": lambda p: json.loads(p.read_text()), "trainable.safetensors": lambda p: load_file(str(p)),
               **{name: lambda p: torch.load(p, weights_only=True) for name in ("optimizer.pt", "scheduler.pt", "rng.pt")}}
    shards = folder / SHARDED
    if shards.is_dir():  # the optimizer's state is in the shards (read by accelerate's load_state)
        readers.pop("optimizer.pt")
    loaded = {"optimizer.pt": None}
    for name, read in readers.items():
        try:  # the checksums matched, yet the file may have been replaced along with them
            loaded[name] = read(folder / name)
        except Exception as e:  # weights_only refuses any pickle that would run code
            raise RunError(f"checkpoint {folder} is corrupt: {name} does not load ({type(e).__name__})",
                           _corrupt_hint(folder)) from None
    return {"weights": loaded["trainable.safetensors"], "optimizer": loaded["optimizer.pt"],
            "scheduler": loaded["scheduler.pt"], "rng": loaded["rng.pt"], "state": loaded["trainer_state.json"],
            "sharded": shards if shards.is_dir() else None}


def load_weights(model, weights: dict) -> None:
    """Copy saved trainable weights into `model` (names must match exactly)."""
    import torch

    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise RunError(f"checkpoint weights do not fit the model (e.g. {missing[0]})",
                       "the run was trained with another base model or method")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def set_python_rng(state: dict) -> None:
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def rotate(root: Path, keep: int, protect: set[int]) -> list[Path]:
    """Delete all but the newest `keep` checkpoints, never one whose step is in `protect` (the best)."""
    done = complete(root)
    doomed = [p for p in done[: max(0, len(done) - keep)] if step_of(p) not in protect]
    for p in doomed:
        # Renamed first: a kill during rmtree leaves a temp folder for sweep(), never a step-N missing files.
        gone = p.with_name(f".{p.name}.deleting.tmp")
        shutil.rmtree(gone, ignore_errors=True)
        os.replace(p, gone)
        shutil.rmtree(gone, ignore_errors=True)
    return doomed


def sweep(root: Path, prefix: str = ".step-") -> list[Path]:
    """Remove the temp folders a killed writer left in `root` (each can be as big as a checkpoint).

    Only the one process that writes checkpoints may call this, before it writes the next one.
    """
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _files(folder: Path) -> list[str]:
    """Every file a checkpoint holds, by path relative to it (the shards' included), sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _corrupt_hint(folder: Path) -> str:
    return f"delete {folder} to resume from the checkpoint before it"
