"""Running the app under uvicorn: in the foreground (`tunesmith serve`) or in a thread (tests, benchmark)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from tunesmith.config import ServeConfig
from tunesmith.errors import ServeError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(cfg: ServeConfig) -> str | None:
    """A warning when the server is reachable from other machines with no API key."""
    if is_loopback(cfg.host) or cfg.api_key:
        return None
    return (f"binding {cfg.host} without an API key: anyone who can reach this machine can use the models "
            "(set --api-key, or bind 127.0.0.1)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one. ServeError when the address is taken or invalid."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e})",
                         "pick another --port, or stop what is using it") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app):
    """A quiet uvicorn server for `app` (warnings only, no access log); `.run(sockets=[sock])` serves."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


@dataclass
class ServerThread:
    """A server on 127.0.0.1 and a free port, in a daemon thread; `stop()` shuts it down."""

    server: Any
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(app, *, timeout: float = 30.0) -> ServerThread:
    """Start uvicorn on a port chosen now (never a fixed one), waiting at most `timeout` s until it listens."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ServeError("the test server did not start")
        time.sleep(0.02)
    return ServerThread(server, thread, sock.getsockname()[1])


def serve(specs: Sequence[str], base: str | None, cfg: ServeConfig, on_ready=lambda names: None,
          device: str = "auto", sock: socket.socket | None = None) -> None:
    """Load the models, then serve them until interrupted (the CLI's whole job).

    `sock`: a socket already listening, for a parent process that chose the port and handed it down
    (the web UI's chat); default: bind cfg.host:cfg.port.
    """
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine

    sock = sock or bind(cfg.host, cfg.port)  # fail on a taken port before minutes of loading
    engine = Engine.load(specs, base, max_batch=cfg.max_batch, device=device, engine=cfg.engine)
    on_ready(engine.names)
    uvicorn_server(create_app(engine, cfg)).run(sockets=[sock])
