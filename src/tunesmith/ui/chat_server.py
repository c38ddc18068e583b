"""The chat page's models: one `serve` child process, started when a chat asks, stopped when idle.

The UI process never loads a model (nor imports torch). A chat names the models it wants; this
starts the OpenAI-compatible server (serve/: the one engine, a run and its base on one copy of
the weights) on them in a child process, on a loopback socket bound here (so no other program
can take the port between choosing and listening) with a random API key, and `stream` relays its
streamed answers. Asking for other models replaces the child; `idle_s` seconds without a request
stop it and give its memory back. The child exits by itself when the UI process goes away.

    python -m tunesmith.ui.chat_server FD DEVICE SPECS_JSON BASE_JSON   (key in TUNESMITH_CHAT_KEY)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from tunesmith.errors import ServeError

KEY_ENV = "TUNESMITH_CHAT_KEY"
IDLE_S = 300.0  # a chat left alone this long gives its models' memory back
START_TIMEOUT_S = 600.0  # loading a large base on a CPU takes minutes


@dataclass(frozen=True)
class Models:
    """What one child serves: runs (names or folders) and, optionally, a base model spec."""

    specs: tuple[str, ...]
    base: str | None = None
    device: str = "auto"


@dataclass
class Child:
    """A running server: its process, port, key and the names it serves (in the order of `Models`)."""

    models: Models
    proc: subprocess.Popen
    port: int
    key: str
    log: Path
    names: list[str] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0  # streams being relayed now; an idle check never stops a child mid-answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None


class ChatServers:
    """At most one chat child at a time. Thread-safe: two streams asking at once start one child."""

    def __init__(self, log_dir: Path, *, idle_s: float = IDLE_S, start_timeout_s: float = START_TIMEOUT_S):
        self.log_dir = Path(log_dir)
        self.idle_s, self.start_timeout_s = idle_s, start_timeout_s
        self._lock = threading.RLock()  # held while a child starts: two streams asking at once start one
        self._child: Child | None = None
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def child(self) -> Child | None:
        """The running child, if any (for the page's status line)."""
        c = self._child
        return c if c is not None and c.alive() else None

    def ensure(self, models: Models) -> Child:
        """The child serving `models`, started (after stopping one serving others) when needed; blocks while the
        models load. ServeError with the child's own one-line message when it cannot start."""
        with self._lock:
            c = self._child
            if c is not None and c.models == models and c.alive():
                c.last_used = time.monotonic()
                return c
            self._stop_child()
            self._child = self._start(models)
            self._start_reaper()
            return self._child

    def hold(self, child: Child) -> Child:
        """Count `child` busy (never reaped) until `done(child)`. An async caller runs `ensure` in a thread and
        holds here, so a client that leaves while the models load leaves no count behind."""
        with self._lock:
            child.active += 1
            return child

    def done(self, child: Child) -> None:
        with self._lock:
            child.active -= 1
            child.last_used = time.monotonic()

    def release(self) -> None:
        """Stop the child now (the page's "release models", a shutdown)."""
        with self._lock:
            self._stop_child()

    def close(self) -> None:
        self._stop.set()
        self.release()

    def reap(self, now: float | None = None) -> bool:
        """Stop the child when it has been idle `idle_s`; True when it did (the reaper thread calls this)."""
        with self._lock:
            c = self._child
            if c is None or c.active or (now or time.monotonic()) - c.last_used < self.idle_s:
                return False
            self._stop_child()
            return True

    # ------------------------------------------------------------------ the child

    def _start(self, models: Models) -> Child:
        from tunesmith.serve.server import bind

        sock = bind("127.0.0.1", 0)
        key = secrets.token_urlsafe(24)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / "chat-server.log"
        args = [sys.executable, "-m", "tunesmith.ui.chat_server", str(sock.fileno()), models.device,
                json.dumps(list(models.specs)), json.dumps(models.base)]
        env = {**os.environ, KEY_ENV: key}
        with open(log, "wb") as err:
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                    pass_fds=[sock.fileno()])
        port = sock.getsockname()[1]
        sock.close()  # the child holds its own copy
        child = Child(models, proc, port, key, log)
        child.names = self._wait_ready(child)
        return child

    def _wait_ready(self, child: Child) -> list[str]:
        """The names the child serves, from its first stdout line; ServeError with its message if it fails."""
        result: dict[str, Any] = {}
        first = threading.Event()

        def read() -> None:
            result.update(_first_line(child.proc))
            first.set()
            with contextlib.suppress(OSError, ValueError):  # anything printed later is drained: the child never
                for _ in child.proc.stdout or ():             # blocks on a full pipe; the pipe closes at its end
                    pass
                child.proc.stdout.close()

        threading.Thread(target=read, daemon=True).start()
        arrived = first.wait(self.start_timeout_s)
        if "ready" in result:
            return list(result["ready"])
        _terminate(child.proc)
        if "error" in result:
            raise ServeError(result["error"])
        if not arrived:
            raise ServeError(f"the chat models did not load within {self.start_timeout_s:.0f} s",
                             "pick smaller models, or try again")
        raise ServeError(f"the chat server stopped while loading: {_last_line(child.log)}",
                         f"see {child.log}")

    def _stop_child(self) -> None:
        if self._child is not None:
            _terminate(self._child.proc)
            self._child = None

    def _start_reaper(self) -> None:
        if self._reaper is not None and self._reaper.is_alive():
            return

        def loop() -> None:
            while not self._stop.wait(min(self.idle_s / 4, 15.0)):
                self.reap()

        self._reaper = threading.Thread(target=loop, name="tunesmith-chat-reaper", daemon=True)
        self._reaper.start()


def _first_line(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline() if proc.stdout else b""
    try:
        msg = json.loads(line)
    except ValueError:
        return {}
    return msg if isinstance(msg, dict) else {}


def _last_line(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------ relaying a streamed answer


async def stream(child: Child, model: str, messages: list[dict], *, max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> AsyncIterator[dict]:
    """The answer of `model` as events: {"text": piece}..., then {"done": finish_reason} or {"error": message}.

    The server's own refusals (a conversation longer than the context, a template that refuses the
    roles) come through as its one-line message.
    """
    import httpx

    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
            "stream": True, **({"seed": seed} if seed is not None else {})}
    headers = {"Authorization": f"Bearer {child.key}"}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=300.0)) as client:
            async with client.stream("POST", f"{child.url}/v1/chat/completions", json=body, headers=headers) as r:
                if r.status_code != 200:
                    yield {"error": _error_message(await r.aread(), r.status_code)}
                    return
                async for event in _events(r.aiter_lines()):
                    yield event
    except httpx.HTTPError as e:
        yield {"error": f"the chat server did not answer ({type(e).__name__}): {_last_line(child.log)}"}


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict]:
    async for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            yield {"error": chunk["error"].get("message", "generation failed")}
            return
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield {"text": text}
            if choice.get("finish_reason"):
                yield {"done": choice["finish_reason"]}


def _error_message(body: bytes, status: int) -> str:
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"the chat server answered HTTP {status}"


# ------------------------------------------------------------------ the child process


def _watch_parent(parent: int) -> None:
    """Exit when the UI process is gone (its child would otherwise keep the models in memory)."""
    while os.getppid() == parent:
        time.sleep(2.0)
    os._exit(0)


def child_main(argv: list[str]) -> int:
    import socket

    from tunesmith.config import load_config, replace
    from tunesmith.errors import TunesmithError
    from tunesmith.serve.server import serve

    fd, device, specs, base = int(argv[0]), argv[1], json.loads(argv[2]), json.loads(argv[3])
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    sock = socket.socket(fileno=fd)
    cfg = replace(load_config(None), serve={"api_key": os.environ[KEY_ENV], "port": sock.getsockname()[1]}).serve

    def ready(names: list[str]) -> None:
        print(json.dumps({"ready": names}), flush=True)

    try:
        serve(specs, base, cfg, on_ready=ready, device=device, sock=sock)
    except TunesmithError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 2
    except Exception as e:  # a bug: one line for the page, the traceback for the log
        import traceback

        traceback.print_exc()
        print(json.dumps({"error": f"the chat server failed: {type(e).__name__}: {e}"}), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
