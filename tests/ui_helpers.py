"""Shared by the UI tests: a UI server on a free port in a thread, and a headless Chromium (Playwright).

    from ui_helpers import page, ui_server, open_page    # fixtures (import them into the test module; `browser` is conftest's)

    def test_x(page, ui_server):
        open_page(page, ui_server, "/runs")    # the URL carries the token; the cookie is set on the first visit
        ...
        assert page.errors == []               # no script error, no failed request (4xx / 5xx) on the way

`ui_server` serves a fresh workspace (`ui_server.workspace`) with an empty $TUNESMITH_HOME of its
own; `browser` skips the test with the reason when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TUNESMITH_CHROMIUM", "/usr/bin/chromium")
TOKEN = "test-token"
ROOT = Path(__file__).resolve().parents[1]
# where screenshot() saves: docs/ui/ only when asked (TUNESMITH_UI_SCREENSHOTS=docs/ui, relative to the
# repository), so an ordinary test run leaves the tracked images alone; else the test's own tmp folder
SCREENSHOTS_ENV = "TUNESMITH_UI_SCREENSHOTS"


@dataclass
class UiServer:
    base: str  # http://127.0.0.1:PORT
    workspace: Path
    home: Path
    app: object

    def url(self, path: str = "/") -> str:
        """`path` on this server, with the token (a first visit sets the cookie, then redirects)."""
        joiner = "&" if "?" in path else "?"
        return f"{self.base}{path}{joiner}token={TOKEN}"


@pytest.fixture
def ui_server(tmp_path, monkeypatch):
    from tunesmith.serve.server import start_in_thread
    from tunesmith.ui.app import create_app

    home, workspace = tmp_path / "home", tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    app = create_app(workspace, TOKEN, state_dir=tmp_path / "jobs")
    server = start_in_thread(app)
    try:
        yield UiServer(server.url, workspace, home, app)
    finally:
        server.stop()


def _playwright_or_skip():
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Playwright Python client is not installed (pip install 'tunesmith[test]')")
    return sync_playwright


def launch_browser():
    """A headless Chromium (Debian's, through executable_path: Playwright's own browser download is not
    reachable offline), yielded until closed; the session's one `browser` fixture (conftest.py) wraps it.
    One for the session, defined once: a fixture imported into two modules is two fixtures, and a
    second sync Playwright cannot start while the first runs."""
    sync_playwright = _playwright_or_skip()
    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


WAIT_MS = 120_000  # a page waits this long for a job (a check, a run) before a test fails


@pytest.fixture
def page(browser, ui_server):
    """A fresh browser page (1280 x 900); `page.errors` collects script errors, console errors and
    every response with status >= 400; `page.screenshot_dir` is where screenshot() saves."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.errors = []
    chosen = os.environ.get(SCREENSHOTS_ENV)
    tab.screenshot_dir = ROOT / chosen if chosen else ui_server.workspace.parent / "screenshots"
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))
    tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    tab.on("response", lambda r: tab.errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    tab.set_default_timeout(WAIT_MS)
    yield tab
    context.close()


def open_page(page, server: UiServer, path: str) -> None:
    """Go to `path` with the token and wait until its requests are done."""
    page.goto(server.url(path))
    page.wait_for_load_state("networkidle")


def screenshot(page, name: str) -> Path:
    """Save the page as <name>.png in `page.screenshot_dir`: docs/ui/ (which the README and docs/ui.md
    show) when $TUNESMITH_UI_SCREENSHOTS says so, else the test's tmp folder."""
    page.screenshot_dir.mkdir(parents=True, exist_ok=True)
    path = page.screenshot_dir / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def fake_run(runs: Path, name: str, *, status: str = "completed", steps: int = 20, best: float | None = 1.5,
             created: str = "2026-12-01T10:00:00", metrics: list[dict] | None = None) -> Path:
    """A run folder as finetune leaves it (manifest, config, metrics), registered in $TUNESMITH_HOME's registry."""
    from tunesmith.config import Config, to_yaml
    from tunesmith.runs.layout import RunPaths, append_metrics, write_manifest
    from tunesmith.runs.store import register_run

    paths = RunPaths(runs / name)
    paths.dir.mkdir(parents=True)
    paths.config.write_text(to_yaml(Config()), encoding="utf-8")
    manifest = {"name": name, "status": status, "created_at": created, "base_model": "smollm2-135m-instruct",
                "method": "lora", "steps": steps, "best_val_loss": best, "best_step": steps if best else None}
    write_manifest(paths, manifest)
    rows = metrics if metrics is not None else [
        {"step": s, "split": "train", "loss": 2.0 - s / 100, "lr": 1e-4, "tokens_per_s": 100.0} for s in range(1, steps + 1)
    ] + [{"step": steps, "split": "validation", "loss": best or 2.0}]
    append_metrics(paths, rows)
    register_run(paths.dir, manifest)
    return paths.dir


def fake_report(runs: Path, name: str, n_examples: int = 500) -> Path:
    """A registered run whose report.json holds `n_examples` x 5 strategies of 30-word answers (what a large
    compare leaves): tests/test_ui_pages2.py and bench/ui_pages.py page through it."""
    import json
    import random

    from tunesmith.runs.store import register_run

    rng = random.Random(0)
    words = "the permit costs fifty euros and takes two weeks to arrive by post or online".split()
    say = lambda: " ".join(rng.choice(words) for _ in range(30))  # noqa: E731
    names = ["base", "prompt", "rag", "tuned", "tuned+rag"]
    run = runs / name
    (run / "final").mkdir(parents=True)
    manifest = {"name": name, "status": "completed", "method": "lora", "base_model": "x"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    examples = [{"line": i + 1, "input": f"question {i}", "reference": say(),
                 "answers": {n: say() for n in names}, "scores": {}} for i in range(n_examples)]
    report = {"run": name, "n_examples": n_examples, "strategies": {n: {"exact_match": 0.0, "loss": 1.0} for n in names},
              "intervals": {}, "forgetting": {"skipped": "--no-probe"}, "examples": examples}
    (run / "report.json").write_text(json.dumps(report))
    register_run(run, manifest)
    return run


def job_with_a_grandchild(pid_file: str) -> None:
    """A job function for tests/test_ui.py: starts a grandchild, writes its pid, and ignores Ctrl-C."""
    import signal
    import subprocess
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "120"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(120)
