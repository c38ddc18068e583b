"""The workspace folder: every path a user names in the UI resolves inside it, or is refused.

A path from the browser is relative to the workspace. Absolute paths, `..` parts, and symlinks
that lead outside are refused with a UiPathError naming the path; nothing outside is read,
listed or written.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tunesmith.errors import TunesmithError

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".gz")
SKIP_DIRS = frozenset({"venv", "node_modules", "__pycache__"})  # and every folder whose name starts with '.'
UPLOADS = "uploads"  # the workspace folder uploads go to
UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,120}$")
MAX_LISTED = 2000  # files offered in a picker
MAX_FOLDERS = 2000  # folders a listing visits, and how deep it goes: a workspace like $HOME is cut, never
MAX_DEPTH = 6  # walked for minutes


class UiPathError(TunesmithError):
    """A path given in the UI is not inside the workspace (or does not exist)."""


@dataclass(frozen=True)
class Workspace:
    """The folder the UI may read from and write into."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path) -> "Workspace":
        root = Path(folder).expanduser().resolve()
        if not root.is_dir():
            raise UiPathError(f"workspace {folder} is not a folder", "pass --workspace DIR, an existing folder")
        return cls(root)

    def resolve(self, rel: str, *, must_exist: bool = True) -> Path:
        """`rel` (relative to the workspace, '/'-separated) as an absolute path inside it.

        Refused: an empty or absolute path, a `..` part, a path whose real location (symlinks
        followed) is outside the workspace, and, with `must_exist`, a path that is not there.
        """
        text = (rel or "").strip()
        try:
            return self._resolve(rel, text, must_exist)
        except (ValueError, OSError) as e:  # a NUL byte, a name too long for the file system
            raise UiPathError(f"'{rel[:80]}' is not a usable path ({type(e).__name__}: {e})",
                              "give a shorter path without control characters") from None

    def _resolve(self, rel: str, text: str, must_exist: bool) -> Path:
        pure = PurePosixPath(text.replace("\\", "/"))
        if not text or pure.is_absolute() or os.path.isabs(text) or (len(text) > 1 and text[1] == ":"):
            raise UiPathError(f"'{rel}' is not a path inside the workspace",
                              f"give a path relative to {self.root}, e.g. data/train.jsonl")
        if ".." in pure.parts:
            raise UiPathError(f"'{rel}' leaves the workspace ('..' is not allowed)", f"stay inside {self.root}")
        path = (self.root / pure).resolve()
        if not path.is_relative_to(self.root):
            raise UiPathError(f"'{rel}' leads outside the workspace (a symlink to {path})",
                              f"copy the file into {self.root} instead")
        if must_exist and not path.exists():
            raise UiPathError(f"no such file in the workspace: {rel}", "pick one from the list, or upload it")
        return path

    def relative(self, path: Path) -> str:
        """The workspace-relative name of `path` (which must be inside it), as the UI shows it."""
        return path.resolve().relative_to(self.root).as_posix()

    def files(self, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[str]:
        """Files under the workspace with one of `suffixes`, sorted; symlinks leading outside and run
        folders (their metrics and data copies) are left out."""
        found: list[str] = []
        for visited, (folder, dirs, names) in enumerate(os.walk(self.root, followlinks=False), start=1):
            if "manifest.json" in names and "config.yaml" in names:  # a run folder: the Runs page shows it
                dirs[:] = []
                continue
            deep = len(Path(folder).relative_to(self.root).parts) >= MAX_DEPTH
            dirs[:] = [] if deep else sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(names):
                if name.lower().endswith(suffixes):
                    path = Path(folder, name)
                    if path.resolve().is_relative_to(self.root):
                        found.append(path.relative_to(self.root).as_posix())
            if len(found) >= MAX_LISTED or visited >= MAX_FOLDERS:
                return found[:MAX_LISTED]
        return found

    def save_upload(self, name: str, data: bytes) -> str:
        """Write an uploaded file to uploads/NAME and return its workspace path.

        Never overwrites: when NAME is taken, NAME-2, NAME-3 ... is used (the page shows which).
        The name must be a plain file name with a data file's suffix.
        """
        base = (name or "").strip()
        if not UPLOAD_NAME.match(base) or not base.lower().endswith(DATA_SUFFIXES):
            raise UiPathError(f"cannot upload '{name}': give a plain file name ending in one of "
                              f"{', '.join(DATA_SUFFIXES)}", "rename the file and upload it again")
        folder = self.resolve(UPLOADS, must_exist=False)  # refused when uploads/ is a symlink leading out
        stem, dot, suffix = base.partition(".")
        try:
            folder.mkdir(exist_ok=True)
            return f"{UPLOADS}/{_write_new(folder, data, stem, dot + suffix)}"
        except OSError as e:  # a full disk, a read-only folder
            raise UiPathError(f"cannot save the upload of {name}: {e.strerror or e}",
                              f"free space in {folder}, or check that it is writable") from None


def _write_new(folder: Path, data: bytes, stem: str, suffix: str) -> str:
    """Write `data` to a temporary file in `folder`, then link it to the first free name of STEM-N.SUFFIX.

    os.link fails when the name is taken (of two uploads of one name at once, each gets its own file,
    and nothing is ever overwritten), and the name only appears once the whole file is written: a
    failed write leaves no truncated file under the user's name."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(temp, 0o644)
        n = 1
        while True:
            candidate = f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}"
            try:
                os.link(temp, folder / candidate)
                return candidate
            except FileExistsError:
                n += 1
    finally:
        os.unlink(temp)
