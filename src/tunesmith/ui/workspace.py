"""The workspace folder: every path a user names in the UI resolves inside it, or is refused.

A path from the browser is relative to the workspace. Absolute paths, `..` parts, and symlinks
that lead outside are refused with a UiPathError naming the path; nothing outside is read,
listed or written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tunesmith.errors import TunesmithError

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".gz")
SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".tunesmith-ui"})
UPLOADS = "uploads"  # the workspace folder uploads go to
UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,120}$")
MAX_LISTED = 2000  # files offered in a picker; a huge tree is cut, never walked for minutes


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
        for folder, dirs, names in os.walk(self.root, followlinks=False):
            if "manifest.json" in names and "config.yaml" in names:  # a run folder: the Runs page shows it
                dirs[:] = []
                continue
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(names):
                if name.lower().endswith(suffixes):
                    path = Path(folder, name)
                    if path.resolve().is_relative_to(self.root):
                        found.append(path.relative_to(self.root).as_posix())
                if len(found) >= MAX_LISTED:
                    return found
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
        folder.mkdir(exist_ok=True)
        stem, dot, suffix = base.partition(".")
        candidate, n = base, 1
        while True:
            try:  # O_EXCL: of two uploads of the same name at once, each gets its own file
                fd = os.open(folder / candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileExistsError:
                n += 1
                candidate = f"{stem}-{n}{dot}{suffix}"
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return f"{UPLOADS}/{candidate}"
