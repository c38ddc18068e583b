"""One writer per run: an OS lock on `<run>/train.lock`, held while a process trains or removes the run.

The lock is `flock` on an open file, so the kernel releases it when the holder exits in any way,
SIGKILL included: a crashed run never stays locked. The file itself stays (deleting a lock file
races with the next process opening it); it holds the last holder's pid, for the refusal message.
Locks are per open file, so a second `hold` in the same process is refused too. flock does not
reach across machines on every network file system; see SECURITY.md.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from tunesmith.errors import RunError
from tunesmith.runs.layout import RunPaths


class RunLock:
    """A held run lock; `release()` (or leaving the `with` block) gives it up."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold(paths: RunPaths) -> RunLock:
    """Take the run's lock without waiting; RunError naming the holder when another process has it."""
    path = paths.lock
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise RunError(f"run '{paths.name}' is in use by {holder} (it holds {path})",
                       "wait for it to finish or stop it; one process at a time trains or removes a run") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return RunLock(path, fd)

