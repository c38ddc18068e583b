"""The Chat page: one message to two models side by side (a run and its base, or two runs), both streaming.

    GET  /chat?left=CHOICE&right=CHOICE   the two panes; CHOICE is `run:NAME` or `base:NAME` (NAME's base
                                          model); the system prompt is preset from the run's data.system
    POST /api/chat/send                   {left, right, system, left_messages, right_messages, max_tokens,
                                          temperature} -> {"left": id, "right": id}
    GET  /api/chat/stream/{id}            server-sent events of one answer: {"status": "loading"},
                                          {"text": piece}..., {"done": reason} or {"error": line}; then `end`
    POST /api/chat/release                stop the models' process now (they also stop after idle minutes)
    GET  /api/chat/status                 what is loaded

The models are served by the OpenAI-compatible server in a child process (ui/chat_server.py); this
module only decides what to serve and relays. The conversation lives in the page: each side keeps
its own history, so each model sees its own earlier answers.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tunesmith.errors import ServeError, TunesmithError
from tunesmith.runs.deliverable import base_spec, run_system
from tunesmith.runs.store import RunInfo
from tunesmith.ui.chat_server import ChatServers, Models, stream
from tunesmith.ui.pages.runs import deliverable_runs, registered_run
from tunesmith.ui.web import ui

LABEL = "Chat"
PENDING_S = 120.0  # an answer sent but never streamed (the tab closed) is forgotten after this
MAX_PENDING = 64


@dataclass(frozen=True)
class Choice:
    """One pane's model: a run, or a run's base model."""

    kind: Literal["run", "base"]
    run: RunInfo

    @classmethod
    def parse(cls, text: str) -> "Choice":
        kind, _, name = (text or "").partition(":")
        if kind not in ("run", "base") or not name:
            raise ServeError(f"'{text}' is not a model choice", "pick run:NAME or base:NAME from the list")
        return cls(kind, registered_run(name))  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        if self.kind == "run":
            return self.run.name
        base = self.run.base_model or "?"
        return f"base of {self.run.name} ({Path(base).name if '/' in base else base})"  # a folder by its name


def models_for(left: Choice, right: Choice, device: str = "auto") -> Models:
    """The one server both panes are answered by: the runs asked for, and at most one base model."""
    specs = tuple(dict.fromkeys(c.run.name for c in (left, right) if c.kind == "run"))
    bases = {base_spec(c.run) for c in (left, right) if c.kind == "base"}
    if len(bases) > 1:
        raise ServeError("the two panes ask for two different base models; one chat serves one base",
                         "compare a base with its own run, or two runs")
    return Models(specs, next(iter(bases), None), device)


def served_name(choice: Choice, names: list[str], models: Models) -> str:
    """The server's model id for `choice`: a run by its name, the base by the one name that is not a run."""
    if choice.kind == "run":
        return choice.run.name
    others = [n for n in names if n not in models.specs]
    if not others:
        raise ServeError(f"the chat server does not serve the base model of {choice.run.name} (serving {names})")
    return others[-1]


@dataclass
class Pending:
    models: Models
    choice: Choice
    messages: list[dict]
    max_tokens: int
    temperature: float
    made: float = field(default_factory=time.monotonic)


@dataclass
class ChatState:
    """The page's state on the app: the model server and the answers sent but not yet streamed."""

    servers: ChatServers
    pending: dict[str, Pending] = field(default_factory=dict)

    def add(self, p: Pending) -> str:
        now = time.monotonic()
        for key in [k for k, v in self.pending.items() if now - v.made > PENDING_S][:MAX_PENDING]:
            del self.pending[key]
        while len(self.pending) >= MAX_PENDING:
            del self.pending[next(iter(self.pending))]
        key = secrets.token_urlsafe(12)
        self.pending[key] = p
        return key


def _state(app: FastAPI) -> ChatState:
    if not hasattr(app.state, "chat"):
        app.state.chat = ChatState(ChatServers(app.state.ui.settings.state_dir.parent / "chat"))
    return app.state.chat


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    if hasattr(app.state, "chat"):  # the models' process ends with the UI
        app.state.chat.servers.close()


router = APIRouter(lifespan=lifespan)


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str


class SendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    left: str
    right: str
    system: str = ""
    left_messages: list[Turn] = Field(min_length=1)
    right_messages: list[Turn] = Field(min_length=1)
    max_tokens: int = Field(256, ge=1, le=2048)
    temperature: float = Field(0.0, ge=0, le=2)


@router.get("/chat")
def chat_page(request: Request, left: str | None = None, right: str | None = None):
    runs = deliverable_runs()
    options = [(f"run:{r.name}", r.name) for r in runs] + [(f"base:{r.name}", f"base of {r.name}") for r in runs]
    if runs:
        right = right or f"run:{runs[0].name}"
        left = left or f"base:{Choice.parse(right).run.name}"
    chosen = [Choice.parse(c) for c in (left, right)] if runs else []
    system = next((run_system(c.run.dir) for c in reversed(chosen) if c.kind == "run"), None)
    child = _state(request.app).servers.child
    return ui(request).render(request, "chat.html", active="chat", options=options, left=left, right=right,
                              labels=[c.label for c in chosen], system=system or "",
                              loaded=child.names if child else None)


@router.post("/api/chat/send")
def chat_send(request: Request, body: SendRequest) -> dict:
    left, right = Choice.parse(body.left), Choice.parse(body.right)
    models = models_for(left, right)
    state = _state(request.app)
    head = [{"role": "system", "content": body.system}] if body.system.strip() else []
    ids = {}
    for side, choice, turns in (("left", left, body.left_messages), ("right", right, body.right_messages)):
        if turns[-1].role != "user":
            raise ServeError(f"the {side} conversation does not end with your message", "send a message")
        messages = head + [t.model_dump() for t in turns]
        ids[side] = state.add(Pending(models, choice, messages, body.max_tokens, body.temperature))
    return ids


@router.get("/api/chat/stream/{answer_id}")
async def chat_stream(request: Request, answer_id: str):
    state = _state(request.app)
    pending = state.pending.pop(answer_id, None)
    return StreamingResponse(_relay(state, pending), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/api/chat/release")
def chat_release(request: Request) -> dict:
    _state(request.app).servers.release()
    return {"loaded": None}


@router.get("/api/chat/status")
def chat_status(request: Request) -> dict:
    child = _state(request.app).servers.child
    return {"loaded": child.names if child else None}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


END = "event: end\ndata: {}\n\n"  # the page's EventSource closes on it (and does not reconnect)


async def _relay(state: ChatState, p: Pending | None) -> AsyncIterator[str]:
    """One answer from the models' server, as the page's events; every failure is one line in the pane."""
    if p is None:
        yield _sse({"error": "this answer was already streamed or has expired: send the message again"})
        yield END
        return
    child = state.servers.child
    if child is None or child.models != p.models:
        yield _sse({"status": "loading"})
    try:
        child = await run_in_threadpool(state.servers.ensure, p.models)
    except TunesmithError as e:
        yield _sse({"error": str(e)})
        yield END
        return
    state.servers.hold(child)
    try:
        name = served_name(p.choice, child.names, p.models)
        yield _sse({"status": "answering", "model": name})
        async for event in stream(child, name, p.messages, max_tokens=p.max_tokens, temperature=p.temperature):
            yield _sse(event)
    except TunesmithError as e:
        yield _sse({"error": str(e)})
    finally:
        state.servers.done(child)
    yield END
