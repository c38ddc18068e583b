"""ONE runner for the UI's long work: a Python API call in a child process, with its log and result.

Training, data checks, prepare, compare and export all go through here, so the UI process stays
light (torch and transformers load only in the child) and responsive. The contract:

    jobs = Jobs(folder, cwd=workspace)
    job = jobs.start("train", "tunesmith.ui.tasks:train", {"overrides": [...]}, title="...", meta={"run": name})
    jobs.get(job.id).status        # running | done | failed | stopped
    jobs.get(job.id).result        # the call's return value (JSON-able) once done
    jobs.get(job.id).error         # once failed: the one line the CLI would print (TunesmithError's message)
    jobs.get(job.id).log()         # the child's stdout and stderr so far (the progress a terminal shows)
    jobs.stop(job.id)              # SIGINT, as Ctrl-C: training saves a checkpoint and marks the run stopped
    jobs.list()                    # this UI process's jobs, newest first
    jobs.close()                   # at shutdown: stop every running job, waiting a little for each

`target` is "module:function", one of ui/tasks.py's TARGETS, called with `kwargs` (JSON-able) in a fresh
interpreter (`python -m tunesmith.ui.job FOLDER`, see ui/job.py); its return value must be
JSON-able. Each job has a folder (`<folder>/<id>/`): spec.json, log.txt, result.json (and traceback.txt
after a bug). A child that dies without a result (killed, out of memory) is `failed` with its exit code and the log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.io import atomic_write_json
from tunesmith.ui.tasks import TARGETS

STATES = ("running", "done", "failed", "stopped")
STOP_GRACE_S = 30.0  # how long close() waits for a stopped child to save its checkpoint, before killing it
LOG_TAIL_BYTES = 64_000


class JobError(TunesmithError):
    """A job that does not exist, or cannot be started."""


@dataclass
class Job:
    """One child process and what it left behind; `refresh()` reads its state from the process and folder."""

    id: str
    kind: str
    title: str
    target: str
    folder: Path
    started: float
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    ended: float | None = None
    result: Any = None
    error: str | None = None
    problems: list[str] | None = None  # a ConfigError's every problem, for forms
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.folder / "log.txt"

    def refresh(self) -> "Job":
        if self.status != "running" or self.process is None or self.process.poll() is None:
            return self
        code = self.process.returncode
        outcome = _read_result(self.folder / "result.json")
        if outcome is None:
            self.status = "failed"
            self.error = (f"the job's process ended without a result (exit code {code}); "
                          f"its log is {self.log_path}")
        else:
            self.status, self.result = outcome.get("status", "failed"), outcome.get("result")
            self.error, self.problems = outcome.get("error"), outcome.get("problems")
        self.ended = time.time()
        return self

    def log(self, tail_bytes: int = LOG_TAIL_BYTES) -> str:
        """The last `tail_bytes` of the child's output (what a terminal would have shown)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - tail_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "title": self.title, "status": self.status,
                "started": self.started, "ended": self.ended, "result": self.result, "error": self.error,
                "problems": self.problems, "meta": self.meta}


def _read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


class Jobs:
    """The jobs of one UI process. Thread-safe: handlers in the threadpool and the event loop share it."""

    def __init__(self, folder: Path, *, cwd: Path, python: str = sys.executable, env: dict[str, str] | None = None):
        self.folder, self.cwd, self.python = Path(folder), Path(cwd), python
        self.env = env
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, target: str, kwargs: dict[str, Any], *, title: str = "",
              meta: dict[str, Any] | None = None) -> Job:
        """Start `target(**kwargs)` in a child process; returns at once with the running Job."""
        if target not in TARGETS:
            raise JobError(f"job target {target!r} is not one of the UI's job functions",
                           "add it to TARGETS in tunesmith/ui/tasks.py")
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
        folder = self.folder / job_id
        folder.mkdir(parents=True)
        try:
            atomic_write_json(folder / "spec.json", {"target": target, "kwargs": kwargs})
        except (TypeError, ValueError) as e:
            raise JobError(f"the {kind} job's arguments are not JSON ({e})") from None
        job = Job(job_id, kind, title or kind, target, folder, time.time(), dict(meta or {}))
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        with open(job.log_path, "wb") as log:
            # a session of its own: the UI's Ctrl-C reaches the child only through close(), in order
            job.process = subprocess.Popen([self.python, "-m", "tunesmith.ui.job", str(folder)], cwd=self.cwd,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
        with self._lock:
            self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobError(f"no job '{job_id}' in this UI session", "jobs live as long as the `tunesmith ui` process")
        return job.refresh()

    def list(self, kind: str | None = None) -> list[Job]:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:  # every one, whatever `kind`: refresh() reaps a child that ended (no zombies)
            job.refresh()
        return [j for j in sorted(jobs, key=lambda j: j.started, reverse=True) if kind in (None, j.kind)]

    def stop(self, job_id: str) -> Job:
        """Ask a running job to stop as Ctrl-C does (SIGINT); a finished one is left as it is."""
        job = self.get(job_id)
        if job.status == "running" and job.process is not None:
            try:
                job.process.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
        return job

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (tests, scripts); JobError after `timeout` seconds."""
        job = self.get(job_id)
        if job.process is not None:
            try:
                job.process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise JobError(f"job {job_id} still running after {timeout} s") from None
        return job.refresh()

    def close(self, grace: float = STOP_GRACE_S) -> None:
        """Stop every running job (SIGINT), wait up to `grace` seconds in all, then kill what is left: the
        whole process group (the child has a session of its own), so its own children go too."""
        running = [j for j in self.list() if j.status == "running"]
        for job in running:
            self.stop(job.id)
        deadline = time.monotonic() + grace
        for job in running:
            try:
                job.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.process.pid, signal.SIGKILL)
                job.process.wait()
            job.refresh()
