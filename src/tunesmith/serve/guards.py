"""The ASGI guards the API server and the web UI share: the Host check and the request body cap.

They run before any route, speak plain ASGI, and answer in OpenAI's error shape
{"error": {"message", "type", "param", "code"}} (the UI's pages read the same shape).
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class TooLarge(HTTPException):
    """Raised while a chunked body arrives; FastAPI passes HTTP exceptions through to the app's handlers."""

    def __init__(self, max_bytes: int, setting: str = "serve.max_body_bytes"):
        super().__init__(413, f"request body over {max_bytes} bytes ({setting})")


class HostCheck:
    """Refuse (400) a request whose Host header is not one of `allowed` (the port is ignored).

    A loopback server with no key is reachable from any web page the user opens, through a DNS
    name that resolves to 127.0.0.1 (DNS rebinding); such requests carry that name as Host.
    """

    def __init__(self, app, allowed, setting: str = "serve.allowed_hosts"):
        self.app, self.allowed, self.setting = app, {h.lower().strip("[]") for h in allowed}, setting

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or host_name(dict(scope.get("headers") or []).get(b"host", b"")) in self.allowed:
            return await self.app(scope, receive, send)
        await send_error(send, 400, f"the Host header is not a name this server answers to ({self.setting})",
                         "invalid_host")


def host_name(header: bytes) -> str:
    """'127.0.0.1:8000' -> '127.0.0.1', '[::1]:8000' -> '::1', 'LocalHost' -> 'localhost'."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413), by Content-Length or while a chunked body arrives."""

    def __init__(self, app, max_bytes: int, setting: str = "serve.max_body_bytes"):
        self.app, self.max_bytes, self.setting = app, max_bytes, setting

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TooLarge(self.max_bytes, self.setting)
            return message

        async def watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        await send_error(send, 413, f"request body over {self.max_bytes} bytes ({self.setting})", "body_too_large")


async def send_error(send, status: int, message: str, code: str) -> None:
    """An OpenAI-shaped client error sent straight through ASGI (for the middlewares, before any route runs)."""
    body = json.dumps(error_body(message, "invalid_request_error", None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
