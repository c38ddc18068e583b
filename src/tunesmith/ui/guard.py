"""Who may use the UI: the access token (cookie or bearer), and CSRF protection on every change.

    GET /anything?token=T      T right: sets an HttpOnly, SameSite=Strict cookie and redirects to
                               the same URL without the token (so it leaves the address bar)
    any request                needs that cookie or `Authorization: Bearer T`; else 401 (the UI's
                               error answer, web.error_response: a page for a browser, else JSON). /static/ is public: it holds
                               only the package's own scripts and styles.
    POST / PUT / PATCH / DELETE  also need `X-CSRF-Token: C` (C: a secret of this process, given to
                               pages in a meta tag) and, when the browser sends Origin, the UI's own
                               origin; else 403.

A cross-site page can make the browser send the cookie (SameSite=Strict already stops most of
that) but cannot read C, so it cannot make a state-changing request.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse

from tunesmith.serve.server import is_loopback
from tunesmith.ui.web import error_response

CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PREFIX = "/static/"

TOKEN_HINT = ("Open the address `tunesmith ui` printed in its terminal (http://HOST:PORT/?token=...), or pass "
              "the key given with --api-key as ?token=KEY.")


def exposure_warning(host: str) -> str | None:
    """A warning when the UI is reachable from other machines: the UI always has a token, but over plain
    HTTP the token (in the printed address) and the cookie cross the network readable by anyone on it."""
    if is_loopback(host):
        return None
    return (f"binding {host}: the UI speaks plain HTTP, so its access token and cookie cross the network "
            "unencrypted and anyone who sees them can use the UI (bind 127.0.0.1 and use an SSH tunnel, "
            "or put it behind an HTTPS proxy)")


def cookie_name(port: int | None) -> str:
    """Cookies are shared by every port of a host: one name per port keeps two UIs apart."""
    return f"tunesmith_ui_{port or 0}"


def _same(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so timing does not reveal how much of a guess was right."""
    return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


class Gate:
    """ASGI middleware enforcing the token and CSRF rules above (see the module docstring)."""

    def __init__(self, app, token: str, csrf: str):
        self.app, self.token, self.csrf = app, token, csrf

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        response = self._check(request)
        if response is None:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def _check(self, request: Request):
        """None to let the request through, else the response that refuses (or redirects) it."""
        if request.url.path.startswith(PUBLIC_PREFIX) and request.method in SAFE_METHODS:
            return None
        name = cookie_name(request.url.port or (request.scope.get("server") or (None, None))[1])
        query_token = request.query_params.get("token")
        if query_token is not None and request.method in SAFE_METHODS:
            if not _same(query_token, self.token):
                return _refuse(request, 401, "the token in the address is wrong")
            rest = urlencode([(k, v) for k, v in parse_qsl(request.url.query) if k != "token"])
            target = request.url.path + (f"?{rest}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(name, self.token, httponly=True, samesite="strict", path="/")
            return response
        bearer = request.headers.get("authorization", "")
        if not (_same(request.cookies.get(name), self.token) or _same(bearer, f"Bearer {self.token}")):
            return _refuse(request, 401, "this UI needs its access token")
        if request.method in SAFE_METHODS:
            return None
        if not _same(request.headers.get(CSRF_HEADER), self.csrf):
            return _refuse(request, 403, f"missing or wrong {CSRF_HEADER} header: reload the page and try again")
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return _refuse(request, 403, f"a request from {origin} may not change anything here")
        return None


def _refuse(request: Request, status: int, reason: str):
    if status == 401:
        return error_response(request, status, reason.capitalize(), code="invalid_token",
                              title="Access token needed", hint=TOKEN_HINT, anonymous=True)
    return error_response(request, status, reason, code="csrf")
