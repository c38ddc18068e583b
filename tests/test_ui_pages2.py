"""The Compare, Chat and Export pages over HTTP (TestClient): real jobs and a real chat child on a tiny run.

Each job and the chat server are child processes that import torch, so the whole path is the
one a user takes; the run is the tiny LoRA run of run_helpers (no training).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from run_helpers import SYSTEM, chat_ready_run

TOKEN = "pages2-token"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished LoRA run with a system prompt, outside any workspace (runs live where training put them)."""
    return chat_ready_run(tiny_model_dir, tmp_path_factory.mktemp("ui2-run"))


@pytest.fixture
def client(tmp_path, monkeypatch, tiny_run):
    """A TestClient with the token, over a fresh workspace and $TUNESMITH_HOME where run-1 is registered."""
    from fastapi.testclient import TestClient

    from tunesmith.runs.store import register_run
    from tunesmith.ui.app import create_app

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job and chat children: tiny models on a shared machine
    register_run(tiny_run, json.loads((tiny_run / "manifest.json").read_text()))
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    app = create_app(workspace, TOKEN, state_dir=tmp_path / "state" / "jobs")
    with TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        c.workspace = workspace
        c.csrf = {"X-CSRF-Token": app.state.ui.csrf}
        c.jobs = app.state.ui.jobs
        yield c


def _wait(client, job_id: str, timeout: float = 240) -> dict:
    client.jobs.wait(job_id, timeout)
    return client.get(f"/api/jobs/{job_id}?log=1").json()


# ------------------------------------------------------------------ pure parts


def test_word_diff_marks_added_and_removed_words_and_gives_the_text_back():
    from tunesmith.ui.word_diff import word_diff

    segments = word_diff("Paris is the capital.", "Paris is a big capital!")
    assert "".join(t for op, t in segments if op != "del") == "Paris is a big capital!"
    assert ("del", "the") in segments and ("add", "a big") in segments and ("add", "!") in segments
    assert word_diff("same words", "same words") == [("same", "same words")]
    assert word_diff("", "new") == [("add", "new")] and word_diff("old", "") == [("del", "old")]


def test_compare_view_marks_significant_differences_and_forgetting():
    from tunesmith.ui.pages.compare import report_view

    report = {"run": "r", "n_examples": 1, "metrics": {"exact_match": "", "token_f1": "", "mine": "user metric"},
              "strategies": {"base": {"exact_match": 0.0, "token_f1": 0.2, "mine": 1.0, "loss": 3.0},
                             "tuned": {"exact_match": 1.0, "token_f1": 0.9, "mine": 0.5, "loss": 2.0}},
              "intervals": {"tuned": {"exact_match": {"diff": 1.0, "low": 0.5, "high": 1.0, "significant": True},
                                      "loss": {"diff": -1.0, "low": -1.5, "high": -0.5, "significant": True},
                                      "token_f1": {"diff": 0.7, "low": -0.1, "high": 0.9, "significant": False}}},
              "forgetting": {"tasks": {"qa": {"base": 50.0, "tuned": 40.0, "change": -10.0, "n": 4, "forgot": True}},
                             "threshold": 5, "mode": "fast"},
              "examples": [{"line": 1, "input": "q", "reference": "Paris.", "answers": {"base": "Rome.", "tuned": "Paris."},
                            "scores": {"base": {"exact_match": 0}, "tuned": {"exact_match": 1}}}]}
    view = report_view(report)
    assert view["metrics"]["columns"] == ["exact match", "token F1", "loss", "mine"]
    tuned = view["metrics"]["rows"][1]["cells"]
    assert [c["verdict"] for c in tuned] == ["better", "", "better", ""]  # lower loss is better
    assert tuned[0]["ci"] == "+1.000 [+0.500, +1.000]"
    assert view["forgetting"]["tasks"][0] == {"name": "qa", "base": "50.0", "tuned": "40.0", "change": "-10.0", "n": 4,
                                              "forgot": True}
    cell = view["examples"][0]["cells"][1]
    assert cell["vs_base"] == [("del", "Rome"), ("add", "Paris"), ("same", ".")]
    assert cell["vs_reference"] == [("same", "Paris.")] and cell["exact"]


def test_a_large_report_is_shown_in_pages_of_answers_only(client, tmp_path, monkeypatch):
    """500 examples x 5 strategies: the metrics at once, the answers (each diffed twice) 50 at a time. What the
    page costs is counted in diffs, not timed (bench/ui_pages.py times it: target 300 ms)."""
    import tunesmith.ui.pages.compare as page
    from ui_helpers import fake_report

    fake_report(tmp_path, "big", n_examples=500)
    diffs = []
    real = page.word_diff
    monkeypatch.setattr(page, "word_diff", lambda a, b: diffs.append(1) or real(a, b))
    html = client.get("/compare?run=big").text
    assert html.count("<td class=\"text answer") == page.EXAMPLES_PER_PAGE * 5 and "examples 1–50 of 500" in html
    # per shown example: 4 strategies against base, 5 against the reference; none for the 450 not shown
    assert len(diffs) == page.EXAMPLES_PER_PAGE * 9, len(diffs)
    last = client.get("/compare?run=big&start=450").text
    assert "examples 451–500 of 500" in last and "question 499" in last and "start=400" in last and "next" not in last


# ------------------------------------------------------------------ security of the routes that change things


def test_state_changing_routes_refuse_a_request_without_the_csrf_header(client):
    for url, body in (("/api/compare/start", {"run": "run-1"}), ("/api/export/start", {"run": "run-1", "formats": ["adapter"]}),
                      ("/api/chat/send", {"left": "base:run-1", "right": "run:run-1",
                                          "left_messages": [{"role": "user", "content": "hi"}],
                                          "right_messages": [{"role": "user", "content": "hi"}]}),
                      ("/api/chat/release", None)):
        r = client.post(url, json=body)
        assert r.status_code == 403 and "x-csrf-token" in r.json()["error"]["message"], url
    assert client.jobs.list() == []


def test_pickers_and_downloads_refuse_paths_outside_the_workspace(client, tmp_path):
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"input": "a", "output": "b"}\n')
    (client.workspace / "link.jsonl").symlink_to(outside)
    for data, says in (("../secret.jsonl", "'..' is not allowed"), (str(outside), "not a path inside the workspace"),
                       ("link.jsonl", "leads outside the workspace"), ("nope.jsonl", "no such file in the workspace")):
        r = client.post("/api/compare/start", json={"run": "run-1", "data": data}, headers=client.csrf)
        assert r.status_code == 400 and says in r.json()["error"]["message"], data
    assert "link.jsonl" not in client.get("/compare").text  # the picker does not offer it either
    export = client.workspace / "exports" / "run-1" / "adapter"
    export.mkdir(parents=True)
    (export / "escape.txt").symlink_to(outside)
    for url in ("/export/files/run-1/adapter/escape.txt", "/export/files/run-1/adapter/..%2F..%2F..%2Fsecret.jsonl",
                "/export/files/run-1/../../secret.jsonl", "/export/files/run-1/other/x", "/export/files/nope/adapter/x"):
        r = client.get(url)
        assert r.status_code in (400, 404) and "secret" not in r.text.replace("secret.jsonl", ""), url
        assert "Traceback" not in r.text
    r = client.post("/api/chat/send", headers=client.csrf,
                    json={"left": "run:../run-1", "right": "run:run-1", "left_messages": [{"role": "user", "content": "x"}],
                          "right_messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "unknown run" in r.json()["error"]["message"]


def test_bad_values_are_the_one_line_messages_of_the_cli(client):
    r = client.post("/api/compare/start", json={"run": "run-1", "strategies": ["base", "magic"]}, headers=client.csrf)
    assert r.status_code == 400 and "magic" in r.json()["error"]["message"]
    r = client.post("/api/compare/start", json={"run": "run-9"}, headers=client.csrf)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("unknown run 'run-9'")
    r = client.post("/api/export/start", json={"run": "run-1", "formats": ["onnx"]}, headers=client.csrf)
    assert r.json()["error"]["message"] == "unknown export format 'onnx' (choose from adapter, merged, gguf)"
    assert "unknown run" in client.get("/compare?run=nope", headers={"Accept": "text/html"}).text


# ------------------------------------------------------------------ the pages' work, in jobs


def test_compare_runs_in_a_job_and_the_page_shows_metrics_probe_and_answers(client, monkeypatch):
    (client.workspace / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"input": "What is the capital of Spain?", "output": "Madrid."},
        {"input": "How many wheels has a bicycle?", "output": "Two."}]))
    page = client.get("/compare")
    assert page.status_code == 200 and '<option value="test.jsonl">' in page.text and "run-1 has no report yet" in page.text
    r = client.post("/api/compare/start", headers=client.csrf,
                    json={"run": "run-1", "data": "test.jsonl", "strategies": ["base", "prompt", "tuned"],
                          "probe": "fast", "max_new_tokens": 5})
    job = _wait(client, r.json()["job"])
    assert job["status"] == "done", job
    assert "tuned: answering" in job["log"]  # the progress lines the page shows while it runs
    html = client.get("/compare?run=run-1").text
    assert "<table id=\"compare-metrics\">" in html and 'data-strategy="tuned"' in html
    assert html.count('class="ci') == 2 * 5  # prompt and tuned against base, each metric but perplexity (exp of loss)
    assert '<table id="compare-forgetting">' in html and "qa_wikidata" in html
    assert "What is the capital of Spain?" in html and 'class="vs-base"' in html and "<span class=\"add\">" in html
    assert "Traceback" not in html


def test_a_compare_on_a_broken_file_fails_with_the_cli_line(client):
    (client.workspace / "broken.jsonl").write_text('{"input": "a", "output": \n')
    r = client.post("/api/compare/start", headers=client.csrf,
                    json={"run": "run-1", "data": "broken.jsonl", "strategies": ["base"], "probe": "none"})
    job = _wait(client, r.json()["job"])
    assert job["status"] == "failed" and "broken.jsonl:1" in job["error"] and "tunesmith data check" in job["error"]
    assert "Traceback" not in job["error"] and "\n" not in job["error"]


def test_export_runs_in_a_job_and_the_page_shows_the_verification_and_serves_the_files(client):
    r = client.post("/api/export/start", json={"run": "run-1", "formats": ["adapter"]}, headers=client.csrf)
    job = _wait(client, r.json()["job"])
    assert job["status"] == "done", job
    assert job["result"][0]["passed"] and "adapter_config.json" in job["result"][0]["files"]
    html = client.get("/export?run=run-1").text
    assert 'id="export-adapter"' in html and "verified" in html and 'class="check match">match</td>' in html
    assert "answers identical" in html
    got = client.get("/export/files/run-1/adapter/adapter_config.json")
    assert got.status_code == 200 and "lora" in got.text.lower()
    # a second export into the same folder is refused as the CLI refuses it, unless asked to replace
    again = _wait(client, client.post("/api/export/start", json={"run": "run-1", "formats": ["adapter"]},
                                      headers=client.csrf).json()["job"])
    assert again["status"] == "failed" and "already exists" in again["error"] and "--overwrite" in again["error"]


# ------------------------------------------------------------------ chat: a child server, streamed through the UI


def _stream(client, answer_id: str) -> list[dict]:
    events = []
    with client.stream("GET", f"/api/chat/stream/{answer_id}") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: {}":
                events.append(json.loads(line[6:]))
    return events


def test_chat_streams_both_answers_from_one_child_server_and_releases_it(client):
    page = client.get("/chat")
    assert SYSTEM in page.text and "base of run-1" in page.text  # the run's system prompt, preset
    turns = [{"role": "user", "content": "Hello there"}]
    ids = client.post("/api/chat/send", headers=client.csrf, json={
        "left": "base:run-1", "right": "run:run-1", "system": SYSTEM, "left_messages": turns, "right_messages": turns,
        "max_tokens": 6}).json()
    left, right = _stream(client, ids["left"]), _stream(client, ids["right"])
    for events in (left, right):
        assert events[0] == {"status": "loading"} or events[0]["status"] == "answering"
        assert [e for e in events if "text" in e] and events[-1] == {"done": "length"}, events
    text = lambda evs: "".join(e.get("text", "") for e in evs)  # noqa: E731
    assert text(left) != text(right)  # the adapter changes the answer
    assert {"status": "answering", "model": "run-1"} in right
    loaded = client.get("/api/chat/status").json()["loaded"]
    assert loaded and "run-1" in loaded
    assert _stream(client, ids["left"]) == [{"error": "this answer was already streamed or has expired: send the message again"}]
    servers = client.app.state.chat.servers
    proc = servers.child.proc
    assert client.post("/api/chat/release", headers=client.csrf).json() == {"loaded": None}
    assert proc.poll() is not None and client.get("/api/chat/status").json() == {"loaded": None}


def test_one_chat_server_serves_two_runs_or_a_run_and_its_base_never_two_bases(client, tmp_path, tiny_run):
    from tunesmith.errors import ServeError
    from tunesmith.runs.store import register_run
    from tunesmith.ui.pages.chat import Choice, models_for, served_name

    other = tmp_path / "run-2"
    other.mkdir()
    manifest = {"name": "run-2", "status": "completed", "method": "lora", "base_model": "smollm2-135m-instruct"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    register_run(other, manifest)
    a, b = Choice.parse("run:run-1"), Choice.parse("run:run-2")
    assert models_for(a, b).specs == ("run-1", "run-2") and models_for(a, b).base is None
    base = Choice.parse("base:run-1")
    m = models_for(base, a)
    assert m.specs == ("run-1",) and m.base == str(tiny_run.parent.parent / "base")
    assert served_name(base, ["run-1", "base"], m) == "base" and served_name(a, ["run-1", "base"], m) == "run-1"
    assert models_for(a, a).specs == ("run-1",)  # the same model in both panes: served once
    with pytest.raises(ServeError, match="two different base models"):
        models_for(base, Choice.parse("base:run-2"))
    with pytest.raises(ServeError, match="is not a model choice"):
        Choice.parse("run-1")


def test_chat_server_is_reaped_when_idle_and_a_failed_start_is_one_line(tmp_path, tiny_run, monkeypatch):
    from tunesmith.errors import ServeError
    from tunesmith.ui.chat_server import ChatServers, Models

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    servers = ChatServers(tmp_path / "chat", idle_s=3600)
    with pytest.raises(ServeError, match="neither a run nor a model"):
        servers.ensure(Models((str(tmp_path / "no-such-run"),)))
    assert servers.child is None
    child = servers.hold(servers.ensure(Models((str(tiny_run),), device="cpu")))  # as the page's relay does
    assert child.names == ["run-1"]
    assert not servers.reap(time.monotonic() + 7200)  # busy: never stopped mid-answer
    servers.done(child)
    assert not servers.reap() and servers.child is child  # not idle long enough
    assert servers.reap(time.monotonic() + 7200) and child.proc.poll() is not None and servers.child is None
    servers.close()


def test_other_models_replace_the_chat_server_and_it_dies_with_the_ui(tmp_path, tiny_run, monkeypatch):
    """Picking other models stops the old child; a UI process that dies takes its child with it."""
    import signal
    import subprocess

    from tunesmith.ui.chat_server import ChatServers, Models

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    script = f"""
import json, os
from pathlib import Path
from tunesmith.ui.chat_server import ChatServers, Models
s = ChatServers(Path({str(tmp_path / "chat")!r}))
first = s.ensure(Models(({str(tiny_run)!r},), device="cpu"))
second = s.ensure(Models(({str(tiny_run)!r},), {str(tiny_run.parent.parent / "base")!r}, device="cpu"))
print(json.dumps([first.proc.poll() is not None, second.names, second.proc.pid]), flush=True)
os._exit(0)  # as a killed UI process: no shutdown, no cleanup
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    replaced, names, pid = json.loads(out.stdout.strip().splitlines()[-1])
    assert replaced and names == ["run-1", "base"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.3)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the chat server outlived the UI process")


def test_the_ui_process_never_imports_torch_for_these_pages(tmp_path, tiny_run):
    """The pages run their heavy work in children: rendering them (and the chat relay) loads no torch."""
    import subprocess

    tests = Path(__file__).parent
    code = f"""
import sys
sys.path.insert(0, {str(tests)!r})
from pathlib import Path
from fastapi.testclient import TestClient
from tunesmith.runs.store import register_run
from tunesmith.ui.app import create_app
import json, tunesmith.ui.chat_server
run = Path({str(tiny_run)!r})
register_run(run, json.loads((run / "manifest.json").read_text()))
app = create_app({str(tmp_path)!r}, "t", state_dir=Path({str(tmp_path / "jobs")!r}))
c = TestClient(app, base_url="http://127.0.0.1", headers={{"Authorization": "Bearer t"}})
for path in ("/compare", "/compare?run=run-1", "/chat", "/chat?left=run:run-1&right=base:run-1", "/export",
             "/api/chat/status"):
    assert c.get(path).status_code == 200, path
print(sorted(m for m in ("torch", "transformers", "accelerate", "peft") if m in sys.modules))
"""
    env = {**os.environ, "TUNESMITH_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
