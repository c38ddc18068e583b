"""The API server's HTTP layer: OpenAI-compatible routes over the engine's worker (the web UI is ui/app.py).

    GET  /health                  liveness, models, queue length
    GET  /v1/models               the servable names (runs, and the base with --base)
    POST /v1/chat/completions     chat, streamed over SSE or not
    POST /v1/completions          raw text continuation, streamed or not

Handlers parse a typed request, submit one job to the worker, and relay its events. Errors use
OpenAI's shape {"error": {"message", "type", "param", "code"}} with 4xx for client mistakes and
503 (with Retry-After) when the queue is full. Fields the engine cannot honour (tools, JSON mode,
logprobs, logit_bias, penalties, images) are refused with 400 `unsupported_parameter`, never
silently ignored. Templating and tokenizing run in a thread, after a character cap, so a huge
prompt never stalls the event loop; a client that goes away cancels its generation.
On a loopback bind the Host header must be a loopback name (serve.allowed_hosts): a web page the
user visits cannot drive the server through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.config import ServeConfig
from tunesmith.errors import TunesmithError
from tunesmith.serve.engine import Busy, Engine, Event, GenerationRequest, Worker
from tunesmith.serve.guards import BodyLimit, HostCheck, TooLarge, error_body
from tunesmith.serve.server import is_loopback

# ------------------------------------------------------------------ request and response types


# Strict: a wrong type is a 400, never coerced ("10" is not a number, true is not 1, "yes" is not a bool).
# Unknown fields are accepted and ignored, as OpenAI's SDKs send fields an older server may not know.
STRICT = ConfigDict(extra="allow", strict=True)


class ContentPart(BaseModel):
    model_config = STRICT
    type: str = "text"
    text: str = ""


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = ""


class Sampling(BaseModel):
    """The OpenAI sampling fields both endpoints share (unknown extra fields are accepted and ignored)."""

    model_config = STRICT
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.Generator.manual_seed takes
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _valid_unicode(self):
        """JSON escapes can carry lone surrogates ("\\ud800"): no tokenizer or response can encode them."""
        try:
            json.dumps(self.model_dump(), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the body holds text that is not valid Unicode (a lone surrogate such as \\ud800)") from None
        return self


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]


class ApiError(Exception):
    """A client mistake, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


# ------------------------------------------------------------------ the app


def create_app(engine: Engine, cfg: ServeConfig, worker: Worker | None = None) -> FastAPI:
    """The FastAPI app; `worker` defaults to a new one over `engine` (closed at shutdown)."""
    owned = worker is None
    worker = worker or Worker(engine, max_queue=cfg.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if owned:  # a worker passed in belongs to the caller
            worker.close()

    app = FastAPI(title="tunesmith", version="1", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.worker, app.state.cfg = engine, worker, cfg
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    if is_loopback(cfg.host) and "*" not in cfg.allowed_hosts:
        app.add_middleware(HostCheck, allowed=cfg.allowed_hosts)
    _add_error_handlers(app)
    auth = Depends(_auth(cfg.api_key))

    @app.get("/health")
    async def health(request: Request) -> dict:
        """Up or not, for anyone; the models and the queue only for a client with the key (or no key set)."""
        if cfg.api_key is not None and not _key_ok(request, cfg.api_key):
            return {"status": "ok"}
        return {"status": "ok", "models": engine.names, "queued": worker.queued}

    @app.get("/v1/models", dependencies=[auth])
    async def models() -> dict:
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "tunesmith"}
                                           for n in engine.names]}

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(body: ChatRequest, request: Request):
        _check_model(engine, body.model)
        _refuse_unsupported(body)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content, i)}
                    for i, m in enumerate(body.messages)]
        _check_chars(sum(len(m["content"]) for m in messages), cfg, "messages")
        ids = await run_in_threadpool(_templated, engine.chat_prompt, body.model, messages)
        gen = _generation(engine, cfg, body, ids)
        return await _respond(worker, gen, body, request, chat=True)

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: CompletionRequest, request: Request):
        _check_model(engine, body.model)
        _refuse_unsupported(body)
        prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt[:1])
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise ApiError(400, "send one prompt per request", param="prompt")
        _check_chars(len(prompt), cfg, "prompt")
        ids = await run_in_threadpool(engine.text_prompt, body.model, prompt)
        gen = _generation(engine, cfg, body, ids)
        return await _respond(worker, gen, body, request, chat=False)

    return app


def _key_ok(request: Request, api_key: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a guessed key was right."""
    header = request.headers.get("authorization", "")
    return hmac.compare_digest(header.encode("utf-8", "surrogateescape"), f"Bearer {api_key}".encode())


def _auth(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        if not _key_ok(request, api_key):
            what = "missing" if not request.headers.get("authorization") else "wrong"
            raise ApiError(401, f"{what} API key: send 'Authorization: Bearer KEY'", "invalid_request_error",
                           code="invalid_api_key")

    return check


def _check_model(engine: Engine, name: str) -> None:
    if "/" in name or "\\" in name or ".." in name:
        raise ApiError(400, f"invalid model name {name!r}: path separators are not allowed", param="model",
                       code="invalid_model")
    if name not in engine.slots:
        raise ApiError(404, f"the model '{name}' does not exist; available: {', '.join(engine.names)}",
                       param="model", code="model_not_found")


def _text(content: str | list[ContentPart] | None, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if part.type != "text":
            raise ApiError(400, f"content parts of type '{part.type}' are not supported: these models read text only",
                           param=f"messages.{index}.content.{j}.type", code="unsupported_parameter")
    return "".join(p.text for p in content)


# field -> the values that mean "not used"; anything else asks for something the engine cannot do
_UNUSED: dict[str, list] = {
    "tools": [None, []], "tool_choice": [None, "none"], "functions": [None, []], "function_call": [None, "none"],
    "response_format": [None, {"type": "text"}], "logprobs": [None, False], "top_logprobs": [None, 0],
    "logit_bias": [None, {}], "presence_penalty": [None, 0], "frequency_penalty": [None, 0], "best_of": [None, 1],
    "echo": [None, False], "suffix": [None, ""], "audio": [None], "modalities": [None, ["text"]], "prediction": [None],
}


def _refuse_unsupported(body: Sampling) -> None:
    """400 `unsupported_parameter` naming the first field set to something this server cannot honour.

    A client asking for JSON mode or a tool call must not get free text with a 200.
    """
    extra = body.model_extra or {}
    for name, unused in _UNUSED.items():
        if name in extra and extra[name] not in unused:
            raise ApiError(400, f"'{name}' is not supported by this server (its models answer in free text); "
                           "remove the field", param=name, code="unsupported_parameter")


def _check_chars(n: int, cfg: ServeConfig, param: str) -> None:
    if n > cfg.max_prompt_chars:
        raise ApiError(400, f"the prompt is {n} characters; this server takes at most {cfg.max_prompt_chars} "
                       "(serve.max_prompt_chars)", param=param, code="context_length_exceeded")


def _templated(chat_prompt, model: str, messages: list[dict]) -> list[int]:
    """The chat template's own refusals (role order, a missing system turn) are the client's to fix: 400."""
    import jinja2

    try:
        return chat_prompt(model, messages)
    except (jinja2.TemplateError, ValueError, TunesmithError) as e:  # raise_exception() in a template is a TemplateError
        raise ApiError(400, f"the model's chat template refused these messages: {e}", param="messages",
                       code="invalid_messages") from None


def _generation(engine: Engine, cfg: ServeConfig, body: Sampling, prompt_ids: list[int]) -> GenerationRequest:
    """Validate the limits and build the engine's request (max_tokens defaults to what the context allows)."""
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise ApiError(400, "at most 4 stop sequences", param="stop")
    room = engine.slot(body.model).context_length - len(prompt_ids)
    if room < 1:
        raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens; the model's context is "
                       f"{engine.slot(body.model).context_length}", param="messages", code="context_length_exceeded")
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if asked is not None and (asked < 1 or asked > cfg.max_tokens_limit):
        raise ApiError(400, f"max_tokens must be between 1 and {cfg.max_tokens_limit} (serve.max_tokens_limit), "
                       f"got {asked}", param="max_tokens")
    max_tokens = min(asked or cfg.max_tokens_limit, room)
    return GenerationRequest(body.model, prompt_ids, max_tokens, body.temperature, body.top_p, body.seed, tuple(stops))


# ------------------------------------------------------------------ relaying the worker's events


async def _respond(worker: Worker, gen: GenerationRequest, body: Sampling, request: Request, *, chat: bool):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    try:
        job = worker.submit(gen, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
    except Busy as e:
        raise ApiError(503, f"the server is busy: {e}; retry shortly", "server_busy", code="queue_full") from None
    ids = _ids(chat)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(_sse(job, events, ids, gen.model, chat, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    parts: list[str] = []
    watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
    try:
        while True:
            event = await events.get()
            if event.error:
                return JSONResponse(error_body(event.error, "server_error"), status_code=500)
            parts.append(event.text)
            if event.finish_reason:
                return _full(ids, gen.model, chat, "".join(parts), event)
    finally:
        watcher.cancel()
        job.cancel()  # a no-op once finished; stops generation if this handler was cancelled


async def _cancel_on_disconnect(request: Request, job) -> None:
    """Wait for the client to go away, then cancel its job: the worker checks between tokens.

    The body has been read, so the next ASGI message is `http.disconnect`; waiting on it costs
    nothing, unlike polling `is_disconnected()` (which a busy event stream never got round to).
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


def _ids(chat: bool) -> dict:
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time())}


def _usage(event: Event) -> dict:
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens}


def _full(ids: dict, model: str, chat: bool, text: str, last: Event) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": last.finish_reason,
                  "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": last.finish_reason, "logprobs": None}
    return {**ids, "object": "chat.completion" if chat else "text_completion", "model": model,
            "choices": [choice], "usage": _usage(last)}


async def _sse(job, events: asyncio.Queue, ids: dict, model: str, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events; a client that goes away cancels this generator, and with it the job."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return _data({**ids, "object": obj, "model": model, "choices": [choice]})

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            event = await events.get()
            if event.error:
                yield _data(error_body(event.error, "server_error"))
                break
            if event.text:
                yield chunk(event.text, None)
            if event.finish_reason:
                yield chunk(None, event.finish_reason)
                if include_usage:
                    yield _data({**ids, "object": obj, "model": model, "choices": [], "usage": _usage(event)})
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()


def _data(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# ------------------------------------------------------------------ errors and limits


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "2"} if e.status == 503 else None
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = (e.errors() or [{}])[0]
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"the body is not valid JSON ({first.get('msg', '')})",
                                           "invalid_request_error", None, "invalid_json"), status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(error_body(f"{where or 'body'}: {first.get('msg', 'invalid value')}",
                                       "invalid_request_error", where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "body_too_large" if isinstance(e, TooLarge) else None  # as when Content-Length gives it away
        return JSONResponse(error_body(str(e.detail), "invalid_request_error", None, code), status_code=e.status_code)
