"""The web UI's HTTP layer (ui/app.py and its pages), in-process with TestClient, plus one live server for SSE.

Security (token, Host, CSRF, workspace confinement, upload cap), the Data page's check on a messy
file, config validation, the runs list and a run's page, live metrics over SSE, and jobs that
finish, fail with the CLI's one line, and stop as Ctrl-C does (then resume).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from ui_helpers import TOKEN, fake_run, ui_server  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "assets" / "smollm2-tokenizer"
BASE = "http://127.0.0.1:8765"
MESSY = [
    '{"input": "What is a permit?", "output": "A permit is an official approval to build."}',
    '{"input": "What is a permit?", "output": "A permit is an official approval to build."}',
    '{"input": "How long does approval take?", "output": "About four weeks."}',
    '{"input": "How long does approval take?", "output": "Two days, usually."}',
    'not json at all',
    '{"input": "Who can I ask?", "output": "Write to john.doe@example.com for help."}',
]


@pytest.fixture
def workspace(tmp_path) -> Path:
    folder = tmp_path / "workspace"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "messy.jsonl").write_text("\n".join(MESSY) + "\n", encoding="utf-8")
    shutil.copytree(TOKENIZER, folder / "tokenizer")  # a model is a store name or a workspace folder
    return folder


def make_client(workspace: Path, tmp_path: Path, **options) -> TestClient:
    from tunesmith.ui.app import create_app

    app = create_app(workspace, TOKEN, state_dir=tmp_path / "jobs", **options)
    return TestClient(app, base_url=BASE)


@pytest.fixture
def anon(workspace, tmp_path, store_home):
    """A client with no credentials."""
    with make_client(workspace, tmp_path) as client:
        yield client


@pytest.fixture
def client(workspace, tmp_path, store_home):
    """A client as the browser is after opening the printed URL: the cookie, and the page's CSRF header."""
    with make_client(workspace, tmp_path) as c:
        assert c.get(f"/runs?token={TOKEN}").status_code == 200  # sets the cookie, follows the redirect
        c.headers["X-CSRF-Token"] = c.app.state.ui.csrf
        yield c


def wait_job(client: TestClient, job: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/api/jobs/{job}?log=1").json()
        if state["status"] != "running":
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job} still running after {timeout} s")


# ------------------------------------------------------------------ who may use it


def test_without_the_token_every_page_and_api_is_refused(anon):
    page = anon.get("/runs", headers={"Accept": "text/html"})
    assert page.status_code == 401 and "Access token needed" in page.text and "?token=" in page.text
    # the one error page (error.html), without the nav, the workspace or the CSRF secret
    assert 'class="error-line"' in page.text and anon.app.state.ui.csrf not in page.text
    assert str(anon.app.state.ui.workspace.root) not in page.text and 'href="/runs"' not in page.text
    api = anon.get("/api/runs")
    assert api.status_code == 401 and api.json()["error"]["code"] == "invalid_token"
    assert anon.get("/runs?token=wrong").status_code == 401
    assert anon.post("/api/data/check", json={"path": "data/messy.jsonl"}).status_code == 401
    assert anon.get("/static/app.js").status_code == 200  # the package's own files are public


def test_an_empty_token_is_refused(workspace, tmp_path):
    from tunesmith.errors import ConfigError
    from tunesmith.ui.app import create_app

    with pytest.raises(ConfigError, match="access token is empty"):
        create_app(workspace, " ", state_dir=tmp_path / "jobs")


def test_the_token_url_sets_an_httponly_strict_cookie_and_leaves_the_address(anon):
    first = anon.get(f"/data?token={TOKEN}&x=1", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/data?x=1"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN in cookie
    assert anon.get("/data").status_code == 200  # the cookie now rides along
    assert anon.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_non_loopback_bind_warns_that_the_token_crosses_the_network_in_plain_http():
    from tunesmith.ui.guard import exposure_warning

    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    warning = exposure_warning("0.0.0.0")
    assert "plain HTTP" in warning and "token" in warning and "API key" not in warning


def test_a_foreign_host_header_is_refused(client):
    response = client.get("/runs", headers={"Host": "attacker.example:8765"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_host"


def test_state_changing_requests_need_the_csrf_header_and_the_uis_own_origin(client):
    body = {"path": "data/messy.jsonl", "out": "data/prepared"}
    no_header = client.post("/api/data/prepare", json=body, headers={"X-CSRF-Token": ""})
    assert no_header.status_code == 403 and no_header.json()["error"]["code"] == "csrf"
    wrong = client.post("/api/data/prepare", json=body, headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    foreign = client.post("/api/data/prepare", json=body, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["error"]["message"]
    # the CSRF secret reaches pages in a meta tag
    assert f'<meta name="csrf-token" content="{client.app.state.ui.csrf}">' in client.get("/data").text
    ok = client.post("/api/data/prepare", json=body, headers={"Origin": BASE})
    assert ok.status_code == 200, ok.text
    assert wait_job(client, ok.json()["job"])["status"] == "done"


def test_pages_carry_a_csp_that_forbids_framing_and_inline_script(client):
    import re

    for path in ("/data", "/train", "/runs"):
        csp = client.get(path).headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    for template in (ROOT / "src" / "tunesmith" / "ui" / "templates").glob("*.html"):
        text = template.read_text(encoding="utf-8")
        inline = [t for t in re.findall(r"<script[^>]*>", text) if "src=" not in t and "application/json" not in t]
        assert not inline and not re.search(r"\son[a-z]+=", text), template.name


def test_jobs_run_only_the_uis_job_functions(client, tmp_path):
    import re

    from tunesmith.ui.jobs import JobError
    from tunesmith.ui.tasks import TARGETS

    with pytest.raises(JobError, match="not one of the UI's job functions"):
        client.app.state.ui.jobs.start("x", "tunesmith.io:atomic_write_text", {"path": str(tmp_path / "x"), "text": ""})
    called = {t for page in (ROOT / "src" / "tunesmith" / "ui" / "pages").glob("*.py")
              for t in re.findall(r'jobs\.start\(\s*"[^"]+",\s*"([^"]+)"', page.read_text(encoding="utf-8"))}
    assert called and called <= TARGETS  # every page's job is allowed


def _changing_routes() -> list[tuple[str, str]]:
    """(method, path) of every state-changing route of the app, the pages that land later included."""
    import re
    import tempfile

    from tunesmith.ui.app import create_app

    def flat(routes):  # FastAPI keeps an included router as one entry (the pages are included without prefix)
        for r in routes:
            yield from flat(r.original_router.routes) if hasattr(r, "original_router") else [r]

    app = create_app(tempfile.mkdtemp(), "t", state_dir=Path(tempfile.mkdtemp()))
    return sorted({(m, re.sub(r"\{[^}]+\}", "x", r.path)) for r in flat(app.routes) for m in getattr(r, "methods", ())
                   if m not in ("GET", "HEAD", "OPTIONS")})


@pytest.mark.parametrize("method, path", _changing_routes())
def test_every_state_changing_route_needs_the_csrf_header_and_origin(client, method, path):
    no_header = client.request(method, path, json={}, headers={"X-CSRF-Token": ""})
    assert no_header.status_code == 403 and no_header.json()["error"]["code"] == "csrf"
    foreign = client.request(method, path, json={}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["error"]["message"]


# ------------------------------------------------------------------ the workspace


@pytest.mark.parametrize("path, says", [
    ("../outside.jsonl", "leaves the workspace"), ("/etc/passwd", "not a path inside the workspace"),
    ("data/../../x.jsonl", "leaves the workspace"), ("data/missing.jsonl", "no such file in the workspace"),
])
def test_paths_outside_the_workspace_are_refused_with_one_line(client, path, says):
    response = client.post("/api/data/check", json={"path": path})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert says in message and "Traceback" not in message and "\n" not in message


@pytest.mark.parametrize("model, says", [
    ("sub/../../elsewhere", "leaves the workspace"), ("/etc", "not a path inside the workspace"),
    ("../tokenizer", "leaves the workspace"), ("no-such-model", "unknown model 'no-such-model'"),
])
def test_a_model_is_a_store_name_or_inside_the_workspace(client, model, says):
    train = client.post("/api/train/validate", json={"values": {"data.train": "data/messy.jsonl", "model.name": model}})
    check = client.post("/api/data/check", json={"path": "data/messy.jsonl", "model": model})
    for response in (train, check):
        assert response.status_code == 400 and says in response.json()["error"]["message"], response.text
    ok = client.post("/api/train/validate", json={"values": {"data.train": "data/messy.jsonl", "model.name": "tokenizer"}})
    tokenizer = json.dumps(str(client.app.state.ui.workspace.root / "tokenizer"))
    assert ok.status_code == 200 and f"model.name={tokenizer}" in ok.json()["overrides"]


def test_a_symlink_that_leads_outside_is_refused_and_not_listed(client, workspace, tmp_path):
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"input": "a", "output": "b"}\n')
    (workspace / "data" / "link.jsonl").symlink_to(secret)
    (workspace / "escape").symlink_to(tmp_path)
    response = client.post("/api/data/check", json={"path": "data/link.jsonl"})
    assert response.status_code == 400 and "leads outside the workspace" in response.json()["error"]["message"]
    assert client.post("/api/data/check", json={"path": "escape/secret.jsonl"}).status_code == 400
    files = client.get("/api/data/files").json()["files"]
    assert [f for f in files if not f.startswith("tokenizer/")] == ["data/messy.jsonl"]


@pytest.mark.parametrize("path", ["data/a\x00b.jsonl", "x" * 5000, "/".join(["y" * 200] * 30)])
def test_a_path_the_file_system_cannot_take_is_a_ui_path_error(client, path):
    response = client.post("/api/data/check", json={"path": path})
    assert response.status_code == 400 and "not a usable path" in response.json()["error"]["message"], response.text


def test_a_failed_upload_leaves_no_file_under_its_name(workspace, monkeypatch):
    import errno

    from tunesmith.ui import workspace as ws

    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ws.os, "fdopen", Full)
    with pytest.raises(ws.UiPathError, match="No space left on device"):
        ws.Workspace.at(workspace).save_upload("faq.jsonl", b"{}\n")
    assert list((workspace / "uploads").iterdir()) == []  # neither faq.jsonl nor the temporary file


def test_the_file_listing_is_bounded_in_depth_and_folders(workspace, monkeypatch):
    from tunesmith.ui import workspace as ws

    deep = workspace.joinpath(*[f"d{i}" for i in range(ws.MAX_DEPTH + 2)])
    deep.mkdir(parents=True)
    (deep / "far.jsonl").write_text("{}\n")
    for i in range(5):
        (workspace / f"wide{i}").mkdir()
        (workspace / f"wide{i}" / "x.jsonl").write_text("{}\n")
    files = ws.Workspace.at(workspace).files()
    assert "data/messy.jsonl" in files and not any(f.endswith("far.jsonl") for f in files)
    monkeypatch.setattr(ws, "MAX_FOLDERS", 3)
    assert len([f for f in ws.Workspace.at(workspace).files() if f.startswith("wide")]) < 5


def test_uploads_are_kept_in_the_workspace_never_overwrite_and_are_capped(workspace, tmp_path, store_home):
    with make_client(workspace, tmp_path, max_upload_bytes=2000) as c:
        c.get(f"/data?token={TOKEN}")
        c.headers["X-CSRF-Token"] = c.app.state.ui.csrf
        body = ("\n".join(MESSY[:2]) + "\n").encode()
        first = c.post("/api/data/upload?name=faq.jsonl", content=body)
        second = c.post("/api/data/upload?name=faq.jsonl", content=b'{"input": "x", "output": "y"}\n')
        assert first.json()["path"] == "uploads/faq.jsonl" and second.json()["path"] == "uploads/faq-2.jsonl"
        assert (workspace / "uploads" / "faq.jsonl").read_bytes() == body  # the first one is untouched
        too_big = c.post("/api/data/upload?name=big.jsonl", content=b"x" * 2001)
        assert too_big.status_code == 413 and not (workspace / "uploads" / "big.jsonl").exists()
        bad_name = c.post("/api/data/upload?name=../evil.jsonl", content=body)
        assert bad_name.status_code == 400 and "plain file name" in bad_name.json()["error"]["message"]
        # every other body stays small, whatever the upload cap
        assert c.post("/api/train/validate", content=b"{" + b" " * (2 << 20) + b"}",
                      headers={"Content-Type": "application/json"}).status_code == 413


# ------------------------------------------------------------------ the Data page


def test_data_check_shows_every_finding_of_a_messy_file(client):
    response = client.post("/api/data/check", json={"path": "data/messy.jsonl", "model": "tokenizer"})
    assert response.status_code == 200, response.text
    job = wait_job(client, response.json()["job"])
    assert job["status"] == "done", job["error"]
    report = job["result"]
    rules = {(f["line"], f["rule"]) for f in report["issues"]}
    assert {(2, "dup.exact"), (4, "dup.conflict"), (5, "json.invalid"), (6, "pii.email")} <= rules
    assert report["summary"]["verdict"]["level"] == "fix-data"
    conflict = next(p for p in report["pairs"] if p["rule"] == "dup.conflict")
    assert conflict["match"] == 3 and "About four weeks." in conflict["match_text"] and "Two days" in conflict["text"]
    hist = report["summary"]["tokens"]["histogram"]
    assert sum(hist["counts"]) == report["summary"]["tokens"]["rows"] and len(hist["edges"]) == len(hist["counts"]) + 1
    trained = "".join(text for text, is_trained in report["preview"][0]["runs"] if is_trained)
    assert "A permit is an official approval to build." in trained


def test_a_broken_file_is_reported_not_crashed_on(client, workspace):
    (workspace / "data" / "broken.csv").write_bytes(b"\x00\x01\x02 not a table")
    response = client.post("/api/data/check", json={"path": "data/broken.csv", "format": "nonsense"})
    assert response.status_code == 400 and "nonsense" in response.json()["error"]["message"]
    started = client.post("/api/data/check", json={"path": "data/broken.csv", "model": "tokenizer"})
    job = wait_job(client, started.json()["job"])
    assert job["status"] == "done"
    assert [f["rule"] for f in job["result"]["issues"]] == ["file.binary"]
    assert job["result"]["summary"]["verdict"]["message"] == "fix the data first: no rows could be read"


# ------------------------------------------------------------------ the Train page


def test_config_errors_come_back_all_at_once_with_the_clis_messages(client):
    response = client.post("/api/train/validate", json={"values": {"train.lr": "fast", "trian.seed": "1"}})
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["problems"] == ["--set train.lr=fast: train.lr: expected float | auto, got 'fast' (str)",
                                 "--set trian.seed=1: unknown key 'trian': did you mean 'train'?"]
    values = {"data.train": "data/messy.jsonl", "train.batch_size": "0", "train.warmup_ratio": "2"}
    checked = client.post("/api/train/validate", json={"values": values}).json()["error"]
    assert checked["problems"] == ["train.batch_size must be >= 1", "train.warmup_ratio must be in [0, 1)"]
    outside = client.post("/api/train/validate", json={"values": {"data.train": "../x.jsonl"}})
    assert "leaves the workspace" in outside.json()["error"]["message"]


def test_form_values_reach_the_config_as_typed(client, workspace):
    """File names YAML would cut ('#' starts a comment, ': ' a mapping) and emoji (a \\ud83d escape came
    back from the YAML parser as a lone surrogate) arrive as the user typed them."""
    from tunesmith.config import load_config

    for name in ("a #b.jsonl", "x: y.jsonl"):
        shutil.copy(workspace / "data" / "messy.jsonl", workspace / "data" / name)
    values = {"data.train": "data/a #b.jsonl", "data.validation": "data/x: y.jsonl", "data.system": "Be kind 🙂 — ünïcode"}
    response = client.post("/api/train/validate", json={"values": values})
    assert response.status_code == 200, response.text
    cfg = load_config(None, response.json()["overrides"])
    assert cfg.data.train == str(workspace / "data" / "a #b.jsonl")
    assert cfg.data.validation == str(workspace / "data" / "x: y.jsonl")
    assert cfg.data.system == "Be kind 🙂 — ünïcode"


def test_the_train_form_is_the_config_with_its_help(client):
    from tunesmith.config import describe_keys

    page = client.get("/train").text
    for key, _, help_text in describe_keys():
        if key.split(".")[0] in ("model", "data", "method", "train"):
            assert f'name="{key}"' in page, key
            assert help_text.replace("'", "&#39;").replace('"', "&#34;")[:40] in page, key
    assert '<option value="qlora"' in page  # enums are selects


# ------------------------------------------------------------------ the Runs pages


def test_runs_list_and_a_runs_page(client, workspace):
    done = fake_run(workspace / "runs", "alpha", best=1.234)
    fake_run(workspace / "runs", "beta", status="failed", best=None, created="2026-12-01T11:00:00")
    (done / "report.html").write_text("<html>report</html>")
    page = client.get("/runs").text
    assert page.index("beta") < page.index("alpha")  # newest first
    assert "1.2340" in page and 'class="status failed"' in page
    rows = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in rows] == ["beta", "alpha"] and rows[1]["steps"] == 20
    run = client.get("/runs/alpha").text
    assert "smollm2-135m-instruct" in run and "/runs/alpha/report" in run and "&#34;status&#34;: &#34;completed&#34;" in run
    report = client.get("/runs/alpha/report")
    assert report.text == "<html>report</html>" and report.headers["content-security-policy"] == "sandbox"
    metrics = client.get("/api/runs/alpha/metrics").json()["rows"]
    assert len(metrics) == 21 and metrics[-1]["split"] == "validation"
    failed = fake_run(workspace / "runs", "gamma", status="failed", best=None)
    manifest = json.loads((failed / "manifest.json").read_text())
    (failed / "manifest.json").write_text(json.dumps({**manifest, "error": "no trainable rows in x.jsonl"}))
    assert '<p class="error-line" id="run-error">failed: no trainable rows in x.jsonl</p>' in client.get("/runs/gamma").text
    overlay = client.get("/runs/overlay?name=alpha&name=beta").text
    assert '["alpha", "beta"]' in overlay
    missing = client.get("/runs/nope", headers={"Accept": "text/html"})
    assert missing.status_code == 400 and "unknown run &#39;nope&#39;" in missing.text and "Traceback" not in missing.text
    assert client.get("/api/runs/..%2F..%2Fetc/metrics").status_code in (400, 404)


def test_the_runs_page_lists_200_runs_from_their_manifests_alone(client, workspace, monkeypatch):
    """The list costs one manifest per run, never a run's metrics (bench/ui_pages.py times it: target 300 ms)."""
    import tunesmith.runs.layout as layout
    import tunesmith.ui.pages.runs as runs_page

    for i in range(200):
        fake_run(workspace / "runs", f"run-{i:03d}", steps=5, created=f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00")

    def no_metrics(*args, **kwargs):
        raise AssertionError("the runs list read a run's metrics")

    for module in (layout, runs_page):
        for name in ("read_metrics", "metric_rows"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, no_metrics)
    page = client.get("/runs")
    assert page.status_code == 200 and page.text.count('type="checkbox"') == 200
    assert client.get("/api/runs").json()["runs"][0]["name"].startswith("run-")


def test_a_new_metrics_line_reaches_the_live_curve_within_two_seconds(ui_server):
    run = fake_run(ui_server.workspace / "runs", "live", status="running", steps=3)
    received: list[tuple[float, dict]] = []
    url = f"{ui_server.base}/api/runs/live/metrics/stream"

    def listen():
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and '"step"' in line:
                    received.append((time.monotonic(), json.loads(line[6:])))
                    if received[-1][1]["step"] == 99:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    deadline = time.monotonic() + 10
    while len(received) < 4 and time.monotonic() < deadline:  # the 3 train lines and the validation line
        time.sleep(0.05)
    assert len(received) == 4
    with open(run / "metrics.jsonl", "a") as f:  # as a run started from the terminal appends
        f.write(json.dumps({"step": 99, "split": "train", "loss": 0.5}) + "\n")
    written = time.monotonic()
    listener.join(5)
    assert received[-1][1]["step"] == 99 and received[-1][0] - written < 2.0


def test_a_replaced_metrics_file_is_sent_again_after_a_reset(tmp_path):
    """A resume rewrites metrics.jsonl (truncate_metrics, an atomic replace): the stream says `reset`
    before sending it from the start, also when the new file has grown past the old offset."""
    import asyncio

    from tunesmith.io import atomic_write_text
    from tunesmith.ui.pages.runs import tail_metrics

    path = tmp_path / "metrics.jsonl"
    line = lambda step: json.dumps({"step": step, "split": "train", "loss": 1.0}) + "\n"  # noqa: E731
    path.write_text("".join(line(s) for s in range(1, 4)))

    async def polls():
        seen = []
        async for batch in tail_metrics(path, is_done=lambda: asyncio.sleep(0, len(seen) >= 2), poll_s=0.01):
            seen.append(batch)
            if len(seen) == 1:  # resumed from step 2, and already past the old size by the next poll
                atomic_write_text(path, "".join(line(s) for s in (1, 2, 3, 4, 5, 6)))
        return seen

    first, second = asyncio.run(polls())
    assert not first.reset and [r["step"] for r in first.rows] == [1, 2, 3]
    assert second.reset and [r["step"] for r in second.rows] == [1, 2, 3, 4, 5, 6]
    assert "reset" in (ROOT / "src" / "tunesmith" / "ui" / "static" / "runs.js").read_text()  # the page drops its rows


def test_a_finished_runs_stream_sends_its_lines_then_ends(client, workspace):
    fake_run(workspace / "runs", "done", steps=4)
    with client.stream("GET", "/api/runs/done/metrics/stream") as response:
        text = "".join(response.iter_text())  # returns: the stream ends by itself
    lines = [line for line in text.splitlines() if line.startswith("data: {\"step\"")]
    assert len(lines) == 5 and 'event: status\ndata: {"status": "completed"}' in text and text.endswith("event: end\ndata: {}\n\n")


def test_resume_takes_only_a_registered_stopped_or_failed_run(client, workspace, tmp_path):
    fake_run(workspace / "runs", "done-run")  # completed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for run, says in [(str(elsewhere), "unknown run"), ("../elsewhere", "unknown run"), ("nope", "unknown run"),
                      ("done-run", "already completed; there is nothing to resume")]:
        response = client.post("/api/train/resume", json={"run": run})
        assert response.status_code == 400 and says in response.json()["error"]["message"], (run, response.text)
    assert client.get("/api/jobs").json()["jobs"] == []  # refused before any job started


@pytest.mark.parametrize("name", ["../../../tmp/x", "a/b", ".."])
def test_a_run_name_that_is_a_path_is_refused_before_the_job(client, name):
    response = client.post("/api/train/start", json={"values": {"data.train": "data/messy.jsonl"}, "name": name})
    assert response.status_code == 400 and "invalid run name" in response.json()["error"]["message"]
    assert client.get("/api/jobs").json()["jobs"] == []


# ------------------------------------------------------------------ jobs


def test_a_failed_job_says_the_clis_one_line(client, workspace):
    (workspace / "no-such-model").mkdir()  # a folder, but not a model: the child's loader refuses it
    start = client.post("/api/train/start", json={"values": {"data.train": "data/messy.jsonl",
                                                             "model.name": "no-such-model", "train.max_steps": "2"}})
    assert start.status_code == 200, start.text
    job = wait_job(client, start.json()["job"])
    assert job["status"] == "failed"
    assert "no-such-model" in job["error"] and "\n" not in job["error"] and "Traceback" not in job["log"]
    assert client.get("/api/jobs").json()["jobs"][0]["id"] == job["id"]
    unknown = client.get("/api/jobs/nope")
    assert unknown.status_code == 400 and "no job 'nope'" in unknown.json()["error"]["message"]


def test_a_bugs_traceback_goes_to_its_own_file_not_the_log(tmp_path, capsys):
    from tunesmith.ui import job

    (tmp_path / "spec.json").write_text(json.dumps({"target": "tunesmith.ui.tasks:plan", "kwargs": {"bogus": 1}}))
    outcome = job.run(tmp_path)  # plan() got an unexpected keyword: a bug, not a user's mistake
    assert outcome["status"] == "failed" and "this is a bug" in outcome["error"] and "\n" not in outcome["error"]
    shown = capsys.readouterr()
    assert "Traceback" not in shown.err + shown.out and outcome["error"] in shown.err
    assert "Traceback" in (tmp_path / job.TRACEBACK).read_text()


def test_finished_children_are_reaped_and_close_kills_the_whole_group(tmp_path, monkeypatch):
    from tunesmith.ui import jobs as jobs_module

    target = "ui_helpers:job_with_a_grandchild"
    monkeypatch.setattr(jobs_module, "TARGETS", jobs_module.TARGETS | {target})
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    jobs = jobs_module.Jobs(tmp_path / "jobs", cwd=tmp_path, env=env)
    quick = jobs.start("check", "tunesmith.ui.tasks:plan", {"bogus": 1})  # fails at once (a TypeError)
    os.waitid(os.P_PID, quick.process.pid, os.WEXITED | os.WNOWAIT)  # ended, not yet reaped
    jobs.list("train")  # another kind's listing
    assert quick.process.returncode is not None  # reaped: no zombie left behind
    pid_file = tmp_path / "grandchild.pid"
    jobs.start("train", target, {"pid_file": str(pid_file)})
    deadline = time.monotonic() + 60
    while not pid_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    jobs.close(grace=0.5)  # the child ignores SIGINT: it and its own child are killed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{grandchild}").exists() and \
            Path(f"/proc/{grandchild}/stat").read_text().split()[2] != "Z":
        time.sleep(0.1)
    state = Path(f"/proc/{grandchild}/stat").read_text().split()[2] if Path(f"/proc/{grandchild}").exists() else "gone"
    assert state in ("gone", "Z")


def test_a_run_stops_as_ctrl_c_does_and_resumes(client, workspace, tiny_model_dir):
    from train_helpers import sums_dataset

    shutil.copytree(tiny_model_dir, workspace / "tiny")
    sums_dataset(workspace / "sums", n_train=24, n_val=4)
    values = {"model.name": "./tiny", "data.train": "sums/train.jsonl", "data.validation": "sums/val.jsonl",
              "train.max_steps": "400", "train.batch_size": "2", "train.eval_every": "3", "train.save_every": "3",
              "train.threads": "1", "train.sample_answers": "0", "method.r": "4", "train.early_stopping_patience": "0"}
    started = client.post("/api/train/start", json={"values": values, "name": "stoppable"}).json()
    checkpoints = workspace / "runs" / "stoppable" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(checkpoints.glob("step-*")):  # renamed into place when complete
        time.sleep(0.2)
    stopped = client.post(f"/api/jobs/{started['job']}/stop")
    assert stopped.status_code == 200
    job = wait_job(client, started["job"])
    assert job["status"] == "stopped", job
    run = client.get("/api/runs").json()["runs"][0]
    assert run["name"] == "stoppable" and run["status"] == "stopped"
    assert "stoppable" in client.get("/train").text  # offered for resume
    steps = max(r["step"] for r in client.get("/api/runs/stoppable/metrics").json()["rows"])
    resumed = client.post("/api/train/resume", json={"run": "stoppable", "max_steps": steps + 3}).json()
    job = wait_job(client, resumed["job"])
    assert job["status"] == "done", job["error"]
    assert job["result"]["status"] == "completed" and job["result"]["steps"] == steps + 3


# ------------------------------------------------------------------ the UI process stays light


def test_the_ui_process_never_imports_torch_or_transformers(workspace, tmp_path):
    fake = f"""
import sys
from fastapi.testclient import TestClient
sys.path.insert(0, {str(ROOT / 'tests')!r})
from ui_helpers import fake_run
from tunesmith.ui.app import create_app
from pathlib import Path
fake_run(Path({str(workspace / 'runs')!r}), "light")
app = create_app({str(workspace)!r}, "t", state_dir=Path({str(tmp_path / 'jobs')!r}))
with TestClient(app, base_url="{BASE}", headers={{"Authorization": "Bearer t", "X-CSRF-Token": app.state.ui.csrf}}) as c:
    for path in ("/data", "/train", "/runs", "/runs/light", "/api/runs/light/metrics", "/api/data/files"):
        assert c.get(path).status_code == 200, path
    values = {{"data.train": "data/messy.jsonl", "model.name": "tokenizer", "train.max_steps": "1"}}
    for path, body in [("/api/train/validate", {{"values": values}}), ("/api/train/start", {{"values": values}}),
                       ("/api/data/check", {{"path": "data/messy.jsonl", "model": "tokenizer"}}),
                       ("/api/data/prepare", {{"path": "data/messy.jsonl", "out": "data/prepared"}})]:
        assert c.post(path, json=body).status_code == 200, path
    for job in c.get("/api/jobs").json()["jobs"]:  # the work ran in the children
        app.state.ui.jobs.wait(job["id"], 120)
    print(sorted(m for m in ("torch", "transformers", "accelerate", "peft") if m in sys.modules))
"""
    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_tunesmith_ui_prints_the_address_with_its_token_and_serves_it(tmp_path):
    import re
    import signal

    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "ui", "--port", "0", "--workspace", str(tmp_path)],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        found = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", line)
        assert found, line
        with httpx.Client(timeout=10) as browser_like:
            page = browser_like.get(found.group(1), follow_redirects=True, headers={"Accept": "text/html"})
            assert page.status_code == 200 and "<h1>Data</h1>" in page.text
            assert browser_like.get(found.group(1).split("?")[0] + "api/runs").json() == {"runs": []}
        assert httpx.get(found.group(1).split("?")[0] + "api/runs", timeout=10).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) in (0, 130, -2)


def test_a_bool_or_auto_key_is_a_select_of_auto_true_false():
    from tunesmith.ui.form import fields

    field = next(f for f in fields()["train"] if f.key == "train.gradient_checkpointing")
    assert (field.kind, field.options, field.default, field.quoted) == ("select", ("auto", "true", "false"), "auto", False)
