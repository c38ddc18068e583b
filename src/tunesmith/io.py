"""Atomic file writes, strict JSON and content hashes: nothing on disk is ever half-written or unreadable."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: str | Path, *, folder: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result the mode a plain open() or mkdir() would."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _usual_modes(root: Path) -> None:
    """The usual modes for `root` and everything in it (symlinks left alone).

    safetensors' save_file creates its files 0600, whoever calls it (peft, transformers, us): a
    deploy folder would be unreadable to the user that serves it.
    """
    _usual_mode(root, folder=True)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink():
                _usual_mode(path, folder=name in dirs)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any, **options: Any) -> str:
    """`obj` as strict JSON (RFC 8259), which every parser reads; `options` go to json.dumps.

    json.dumps would write NaN, Infinity and -Infinity as bare words that are not JSON; they are
    written as the strings "NaN", "Infinity" and "-Infinity" instead, so nothing is lost.
    """
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **options)
    except ValueError:  # a non-finite float somewhere: rare, so only then is the whole object walked
        return json.dumps(_finite(obj), ensure_ascii=False, allow_nan=False, **options)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_bytes(text: str) -> bytes:
    # A lone surrogate (half of a "\ud83d\ude00" pair, read from a JSON escape) cannot be UTF-8; it
    # only occurs inside JSON strings, where backslashreplace writes it as the same JSON escape.
    return text.encode("utf-8", "backslashreplace")


def read_json_object(path: str | Path) -> dict:
    """The JSON object in `path`; {} when the file is missing, unreadable or holds something else."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as strict, indented JSON (see json_text); values JSON has no type for are written as str()."""
    return atomic_write_bytes(path, _json_bytes(json_text(obj, indent=2, default=str) + "\n"))


def atomic_write_jsonl(path: str | Path, rows: Any) -> Path:
    """Stream rows as strict JSON lines into a temp file, then rename: a crash leaves the old file, never half a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir_file(path) as tmp:
        with open(tmp, "wb") as f:
            for row in rows:
                f.write(_json_bytes(json_text(row) + "\n"))
    return path


@contextlib.contextmanager
def atomic_dir_file(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and renamed to `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it is renamed to `path` in one step.

    Every file and folder in it gets the mode a plain open() or mkdir() gives (umask applied).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _usual_modes(tmp)
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class Keep:
    """A path that replacing a folder must never destroy; `what` names it in messages.

    With `inside`, no folder inside it may be replaced either (tunesmith's own store).
    """

    what: str
    path: Path
    inside: bool = False


def replace_clash(folder: str | Path, keep: Iterable[Keep]) -> str | None:
    """Why replacing `folder` and all it holds would destroy a kept path, else None.

    The reason reads after the folder's name: "is the current folder (/w)", "holds the input
    file (/w/x.jsonl)", "is inside $TUNESMITH_HOME (/h)". Paths are compared resolved (symlinks
    followed), so another spelling of the same place clashes too.
    """
    folder = Path(folder).expanduser().resolve()
    for k in keep:
        path = Path(k.path).expanduser().resolve()
        if folder == path:
            return f"is {k.what} ({path})"
        if folder in path.parents:
            return f"holds {k.what} ({path})"
        if k.inside and path in folder.parents:
            return f"is inside {k.what} ({path})"
    return None


def some_names(names: list[str], shown: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more': the files a refusal names, without a wall of them."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def is_disk_full(error: OSError) -> bool:
    """Whether `error` means no space is left (the disk, or the user's quota)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One digest over several files (sorted by name), e.g. a model's weight shards."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.name):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
