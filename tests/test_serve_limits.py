"""The server keeps a production API's promises (issue 13, part 4): a bounded queue answered with 503,
disconnects that free the engine, templating off the event loop, Host checks, a quiet /health,
template errors as 400, and tiny temperatures as greedy.

Most tests drive the real app and worker over a scripted engine (no model), so timing is
under the test's control: each token takes TOKEN_S and the engine records how many it made.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tunesmith.config import ServeConfig
from tunesmith.serve.app import create_app
from tunesmith.serve.engine import Event, Handle, Worker
from tunesmith.serve.server import start_in_thread

KEY = "limits-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOKEN_S = 0.02


@dataclass
class _Slot:
    context_length: int = 4096


@dataclass
class ScriptedRunner:
    """The generation engine's interface with a made-up model: each step takes TOKEN_S and gives every row 'tok '."""

    max_batch: int = 16
    tokens_made: int = 0
    rows: list = field(default_factory=list)
    queue: list = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)

    def submit(self, prompt_ids, sampling, sink, adapter=None):
        handle = Handle(len(self.queue) + len(self.rows), list(prompt_ids), sampling, sink, adapter)
        self.queue.append(handle)
        return handle

    busy = property(lambda self: bool(self.rows or self.queue))
    waiting = property(lambda self: len(self.queue))
    active = property(lambda self: len(self.rows))

    def step(self):
        self.rows = [r for r in self.rows if not r[0].cancelled.is_set()]
        while self.queue and len(self.rows) < self.max_batch:
            self.rows.append([self.queue.pop(0), 0])
        if not self.rows:
            self.running.clear()
            return
        self.running.set()
        time.sleep(TOKEN_S)
        for row in list(self.rows):
            handle, row[1] = row[0], row[1] + 1
            self.tokens_made += 1
            handle.sink(Event("tok "))
            if row[1] >= handle.sampling.max_tokens:
                self.rows.remove(row)
                handle.sink(Event("", "length", len(handle.prompt_ids), row[1]))
        if not self.rows:
            self.running.clear()

    def fail(self, message):
        raise AssertionError(message)


@dataclass
class ScriptedEngine:
    """The served-models interface (serve/engine.py) over one ScriptedRunner; templating can be made slow."""

    template_delay: float = 0.0
    max_batch: int = 16
    slots: dict = field(default_factory=lambda: {"m": _Slot()})

    def __post_init__(self):
        self.runners = [ScriptedRunner(self.max_batch)]

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def slot(self, name: str) -> _Slot:
        return self.slots[name]

    def chat_prompt(self, name: str, messages) -> list[int]:
        if any(m["role"] == "system" for m in messages[1:]):  # as Mistral's and Llama 2's templates do
            import jinja2

            raise jinja2.TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")
        time.sleep(self.template_delay)
        return [1, 2, 3]

    def text_prompt(self, name: str, text: str) -> list[int]:
        return [1]

    def submit(self, req, sink):
        return self.runners[0].submit(req.prompt_ids, req.sampling, sink)


@pytest.fixture
def scripted():
    servers = []

    def start(engine: ScriptedEngine, **cfg):
        worker = Worker(engine, max_queue=cfg.pop("max_queue", 64))
        server = start_in_thread(create_app(engine, ServeConfig(api_key=KEY, **cfg), worker))
        servers.append((server, worker))
        return server, worker

    yield start
    for server, worker in servers:
        server.stop()
        worker.close()


def _chat(max_tokens: int = 4, **extra) -> dict:
    return {"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_a_full_queue_is_answered_503_with_retry_after(scripted):
    engine = ScriptedEngine(max_batch=1)  # one generates, the others wait
    server, worker = scripted(engine, max_queue=2, max_tokens_limit=500)
    results: list[int] = []

    def ask():
        results.append(httpx.post(f"{server.url}/v1/chat/completions", json=_chat(100), headers=AUTH, timeout=60)
                       .status_code)

    threads = [threading.Thread(target=ask) for _ in range(3)]  # one runs, two wait: the queue is full
    for t in threads:
        t.start()
        time.sleep(0.2)
    r = httpx.post(f"{server.url}/v1/chat/completions", json=_chat(), headers=AUTH, timeout=60)
    assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    assert r.json()["error"]["code"] == "queue_full"
    for t in threads:
        t.join()
    assert results == [200, 200, 200]  # the queued ones are served in the end


def test_a_non_streaming_client_that_leaves_frees_the_engine_within_a_token(scripted):
    engine = ScriptedEngine()
    server, worker = scripted(engine, max_tokens_limit=2000)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up long before 2000 tokens
        httpx.post(f"{server.url}/v1/chat/completions", json=_chat(2000), headers=AUTH, timeout=0.5)
    left = time.monotonic()
    runner = engine.runners[0]
    while runner.running.is_set() and time.monotonic() - left < 5:
        time.sleep(0.005)
    assert not runner.running.is_set()
    assert time.monotonic() - left < 0.5  # a few tokens' time for the server to see the closed socket
    assert runner.tokens_made < 60  # 2000 had it run on


def test_templating_runs_off_the_event_loop(scripted):
    engine = ScriptedEngine(template_delay=2.0)  # a slow template, as a huge prompt would be
    server, _ = scripted(engine)
    slow = threading.Thread(target=httpx.post, args=(f"{server.url}/v1/chat/completions",),
                            kwargs={"json": _chat(), "headers": AUTH, "timeout": 30})
    slow.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    assert time.monotonic() - t0 < 1.0  # the loop was free while the template ran
    slow.join()


def test_prompt_over_the_character_cap_is_refused_before_tokenizing(scripted):
    server, _ = scripted(ScriptedEngine(template_delay=30.0), max_prompt_chars=1000)
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=30,
                   json={**_chat(), "messages": [{"role": "user", "content": "x" * 1001}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "messages" and time.monotonic() - t0 < 5


def test_template_refusal_is_a_400_in_openai_shape(scripted):
    server, _ = scripted(ScriptedEngine())
    body = {**_chat(), "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_messages" and error["param"] == "messages" and "alternate" in error["message"]


def test_health_without_the_key_says_only_that_it_is_up(scripted):
    server, _ = scripted(ScriptedEngine())
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
    full = httpx.get(f"{server.url}/health", headers=AUTH, timeout=10).json()
    assert full["models"] == ["m"] and full["queued"] == 0
    wrong = httpx.get(f"{server.url}/health", headers={"Authorization": "Bearer nope"}, timeout=10).json()
    assert wrong == {"status": "ok"}


def test_host_header_must_be_a_loopback_name_on_a_loopback_bind(scripted):
    server, _ = scripted(ScriptedEngine())
    for host in ("localhost", "127.0.0.1", f"127.0.0.1:{server.port}", "[::1]:8000", "LOCALHOST"):
        assert httpx.get(f"{server.url}/health", headers={"Host": host}, timeout=10).status_code == 200, host
    r = httpx.get(f"{server.url}/health", headers={"Host": "rebind.attacker.example"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    open_server, _ = scripted(ScriptedEngine(), allowed_hosts=["*"])
    assert httpx.get(f"{open_server.url}/health", headers={"Host": "my-box.lan"}, timeout=10).status_code == 200


def test_unsupported_fields_name_themselves_and_harmless_values_pass(scripted):
    server, _ = scripted(ScriptedEngine())
    url = f"{server.url}/v1/chat/completions"
    for field_name, value in (("tools", [{"type": "function"}]), ("response_format", {"type": "json_object"}),
                              ("logprobs", True), ("logit_bias", {"1": 5}), ("presence_penalty", 0.1)):
        r = httpx.post(url, json=_chat(**{field_name: value}), headers=AUTH, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field_name, (field_name, r.text)
        assert r.json()["error"]["code"] == "unsupported_parameter"
    harmless = {"tools": [], "response_format": {"type": "text"}, "logprobs": False, "presence_penalty": 0,
                "frequency_penalty": 0.0, "logit_bias": {}, "user": "someone", "store": False}
    assert httpx.post(url, json=_chat(**harmless), headers=AUTH, timeout=30).status_code == 200


def test_a_tiny_temperature_is_greedy():
    import torch

    from tunesmith.models.engine import pick

    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    gen = torch.Generator().manual_seed(0)
    assert {pick(logits, 1e-300, 1.0, gen) for _ in range(20)} == {1}
    assert {pick(logits, 0.0, 0.5, gen) for _ in range(5)} == {1}
