"""Server under load and abuse: N concurrent clients (streaming and not) for a bounded time, bad requests mixed in.

    python bench/serve_load.py                      # a tiny random model (seconds to build), 32 clients, 20 s
    python bench/serve_load.py --model smollm2-135m-instruct --seconds 60
    python bench/serve_load.py --clients 64 --max-tokens 32 --no-abuse

Each client loops until the time is up (it never starts a request after that): one chat request,
streaming for even-numbered clients (read to `data: [DONE]`, time to the first chunk with content
recorded) and not streaming for odd ones, and records the latency (request sent -> answer complete). One more client sends malformed requests (`abuse_cases`) in a loop meanwhile;
each must get its 4xx in OpenAI's error shape. The server listens on 127.0.0.1 and a free port.
Prints the figures, then one JSON line. tests/test_serve_load.py drives `run_load` the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUESTIONS = ["What is the capital of France?", "List three colours.", "How do I reset my password?",
             "Write one sentence about the sea."]
ERROR_KEYS = {"message", "type", "param", "code"}
GOOD = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 4, "temperature": 0}


@dataclass(frozen=True)
class Abuse:
    """One malformed request and the status it must get. `body` is JSON; `raw` is sent as bytes instead."""

    name: str
    status: int
    body: dict | None = None
    raw: bytes | None = None
    headers: dict | None = None  # replaces the default headers (the right API key, JSON content type)
    method: str = "POST"
    path: str = "/v1/chat/completions"


def abuse_cases(model: str, max_tokens_limit: int, max_body_bytes: int) -> list[Abuse]:
    """Every kind of bad request the server must refuse with a 4xx and survive."""
    ok = {**GOOD, "model": model}
    msg = lambda content: {**ok, "messages": [{"role": "user", "content": content}]}  # noqa: E731
    return [
        Abuse("bad json", 400, raw=b'{"model": "' + model.encode() + b'", "messages": ['),
        Abuse("not json at all", 400, raw=b"\xff\xfe\x00garbage"),
        Abuse("empty body", 400, raw=b""),
        Abuse("json null", 400, raw=b"null"),
        Abuse("json array", 400, raw=b"[1, 2]"),
        Abuse("deep nesting", 400, raw=b"[" * (max_body_bytes // 4) + b"]" * (max_body_bytes // 4)),
        Abuse("messages not a list", 400, {**ok, "messages": "hello"}),
        Abuse("no messages", 400, {**ok, "messages": []}),
        Abuse("messages missing", 400, {"model": model}),
        Abuse("role not a string", 400, {**ok, "messages": [{"role": 5, "content": "hi"}]}),
        Abuse("unknown role", 400, {**ok, "messages": [{"role": "wizard", "content": "hi"}]}),
        Abuse("content a number", 400, msg(5)),
        Abuse("content part text a number", 400, msg([{"type": "text", "text": 5}])),
        Abuse("model a number", 400, {**ok, "model": 123}),
        Abuse("max_tokens a string", 400, {**ok, "max_tokens": "ten"}),
        Abuse("max_tokens numeric string", 400, {**ok, "max_tokens": "10"}),
        Abuse("max_tokens a bool", 400, {**ok, "max_tokens": True}),
        Abuse("max_tokens a fraction", 400, {**ok, "max_tokens": 1.5}),
        Abuse("stream a string", 400, {**ok, "stream": "yes"}),
        Abuse("temperature a string", 400, {**ok, "temperature": "hot"}),
        Abuse("temperature too high", 400, {**ok, "temperature": 3}),
        Abuse("temperature NaN", 400, raw=json.dumps(ok).encode()[:-1] + b', "temperature": NaN}'),
        Abuse("top_p zero", 400, {**ok, "top_p": 0}),
        Abuse("n=2", 400, {**ok, "n": 2}),
        Abuse("five stop strings", 400, {**ok, "stop": ["a", "b", "c", "d", "e"]}),
        Abuse("stop a number", 400, {**ok, "stop": 5}),
        Abuse("stream_options a string", 400, {**ok, "stream": True, "stream_options": "x"}),
        Abuse("max_tokens negative", 400, {**ok, "max_tokens": -5}),
        Abuse("max_tokens zero", 400, {**ok, "max_tokens": 0}),
        Abuse("max_tokens over the limit", 400, {**ok, "max_tokens": max_tokens_limit + 1}),
        Abuse("max_tokens huge", 400, {**ok, "max_tokens": 10**30}),
        Abuse("max_tokens infinite", 400, raw=json.dumps(ok).encode()[:-1] + b', "max_tokens": 1e400}'),
        Abuse("seed past 64 bits", 400, {**ok, "seed": 2**64}),
        Abuse("seed below -2**63", 400, {**ok, "seed": -(2**63) - 1}),
        Abuse("lone surrogate in content", 400, raw=json.dumps(msg("hi \ud800 there")).encode()),
        Abuse("lone surrogate in model", 400, raw=json.dumps({**ok, "model": "\udcff"}).encode()),
        Abuse("prompt longer than the context", 400, msg("colour " * (max_body_bytes // 16))),
        Abuse("body over the limit", 413, msg("x" * (max_body_bytes + 1))),
        Abuse("model ../", 400, {**ok, "model": f"../{model}"}),
        Abuse("model ../../etc/passwd", 400, {**ok, "model": "../../etc/passwd"}),
        Abuse("model with a slash", 400, {**ok, "model": f"{model}/../{model}"}),
        Abuse("model with a backslash", 400, {**ok, "model": "..\\..\\x"}),
        Abuse("model ..", 400, {**ok, "model": ".."}),
        Abuse("model absolute path", 400, {**ok, "model": "/etc/passwd"}),
        Abuse("model unknown", 404, {**ok, "model": "no-such-model"}),
        Abuse("model with a NUL", 404, {**ok, "model": model + "\x00"}),
        Abuse("completion prompt as token ids", 400, {"model": model, "prompt": [1, 2, 3]}, path="/v1/completions"),
        Abuse("completion two prompts", 400, {"model": model, "prompt": ["a", "b"]}, path="/v1/completions"),
        Abuse("API key missing", 401, ok, headers={"Content-Type": "application/json"}),
        Abuse("API key wrong", 401, ok, headers={"Authorization": "Bearer wrong"}),
        Abuse("API key in the wrong scheme", 401, ok, headers={"Authorization": "Basic d3Jvbmc6d3Jvbmc="}),
        Abuse("models without a key", 401, None, headers={}, method="GET", path="/v1/models"),
        Abuse("GET a POST route", 405, None, method="GET"),
        Abuse("unknown route", 404, ok, path="/v1/../../etc/passwd"),
        Abuse("tools asked for", 400, {**ok, "tools": [{"type": "function", "function": {"name": "f"}}]}),
        Abuse("tool_choice required", 400, {**ok, "tool_choice": "required"}),
        Abuse("JSON mode", 400, {**ok, "response_format": {"type": "json_object"}}),
        Abuse("JSON schema", 400, {**ok, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        Abuse("logprobs", 400, {**ok, "logprobs": True, "top_logprobs": 2}),
        Abuse("logit_bias", 400, {**ok, "logit_bias": {"50256": -100}}),
        Abuse("presence_penalty", 400, {**ok, "presence_penalty": 0.5}),
        Abuse("frequency_penalty", 400, {**ok, "frequency_penalty": -1}),
        Abuse("an image part", 400, msg([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}])),
        Abuse("completion echo", 400, {"model": model, "prompt": "a", "echo": True}, path="/v1/completions"),
        Abuse("Host of another site (DNS rebinding)", 400, ok,
              headers={"Host": "attacker.example", "Authorization": "Bearer {key}", "Content-Type": "application/json"}),
    ]


def send_abuse(client, url: str, case: Abuse, api_key: str | None) -> tuple[int, dict | None]:
    """Send one bad request; (status, the parsed `error` object or None when the body is not that shape)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    if case.headers is not None:
        headers = {k: v.replace("{key}", api_key or "") for k, v in case.headers.items()}
    content = case.raw if case.raw is not None else (json.dumps(case.body).encode() if case.body is not None else None)
    r = client.request(case.method, url + case.path, content=content, headers=headers)
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return r.status_code, None
    ok = isinstance(error, dict) and set(error) == ERROR_KEYS and isinstance(error["message"], str)
    return r.status_code, error if ok else None


@dataclass
class LoadResult:
    """What the clients saw. Latencies in seconds."""

    clients: int
    seconds: float
    requests: int = 0
    completed: int = 0  # streams that ended with `data: [DONE]` and no error chunk
    status: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first_chunk: list[float] = field(default_factory=list)
    tokens: int = 0
    abuse_sent: int = 0
    abuse_wrong: list[str] = field(default_factory=list)  # cases that did not get their 4xx in OpenAI's shape
    failures: list[str] = field(default_factory=list)  # good requests that failed, and why
    hung: int = 0  # clients still running well after the deadline
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.status.items() if code >= 500)

    def percentile(self, q: float, values: list[float] | None = None) -> float:
        values = sorted(self.latencies if values is None else values)
        if not values:
            return float("nan")
        return values[max(0, math.ceil(q / 100 * len(values)) - 1)]  # nearest rank

    def summary(self) -> dict:
        return {"clients": self.clients, "seconds": round(self.seconds, 1), "requests": self.requests,
                "streams_completed": self.completed, "errors_5xx": self.server_errors,
                "other_failures": len(self.failures), "status": {str(k): v for k, v in sorted(self.status.items())},
                "latency_p50_s": round(self.percentile(50), 3), "latency_p95_s": round(self.percentile(95), 3),
                "first_chunk_p50_s": round(self.percentile(50, self.first_chunk), 3),
                "tokens": self.tokens, "tokens_per_s": round(self.tokens / self.seconds, 1) if self.seconds else 0.0,
                "abuse_sent": self.abuse_sent, "abuse_wrong": len(self.abuse_wrong), "hung_clients": self.hung}


def stream_once(client, url: str, body: dict, api_key: str | None) -> tuple[int, bool, float, float | None, int, str]:
    """One streaming chat request: (status, completed, latency, first chunk, tokens, why it failed)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.perf_counter()
    first, tokens, done, why = None, 0, False, ""
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code, False, time.perf_counter() - t0, None, 0, f"HTTP {r.status_code}: {r.text[:200]}"
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                why = f"error chunk: {chunk['error']}"
            elif chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or [{}]
            if first is None and choices[0].get("delta", {}).get("content"):  # not the role-only first chunk
                first = time.perf_counter() - t0
    return 200, done and not why, time.perf_counter() - t0, first, tokens, why or ("" if done else "no [DONE]")


def complete_once(client, url: str, body: dict, api_key: str | None) -> tuple[int, bool, float, float | None, int, str]:
    """One non-streaming chat request, in stream_once's shape (the first chunk is the whole answer)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.perf_counter()
    r = client.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, headers=headers)
    latency = time.perf_counter() - t0
    if r.status_code != 200:
        return r.status_code, False, latency, None, 0, f"HTTP {r.status_code}: {r.text[:200]}"
    answer = r.json()
    ok = answer["choices"][0]["finish_reason"] in ("stop", "length") and "content" in answer["choices"][0]["message"]
    return 200, ok, latency, latency, answer["usage"]["completion_tokens"], "" if ok else f"bad answer: {answer}"


def run_load(url: str, models: list[str], *, clients: int = 32, seconds: float = 20.0, max_tokens: int = 16,
             api_key: str | None = None, abuse: list[Abuse] = (), timeout: float = 120.0) -> LoadResult:
    """`clients` threads ask for chat answers (even ones streamed, odd ones not) until `seconds` have passed;
    one more sends `abuse` meanwhile."""
    import httpx

    result = LoadResult(clients, seconds)
    deadline = time.monotonic() + seconds

    def client_loop(i: int) -> None:
        with httpx.Client(timeout=timeout) as c:
            n = 0
            while time.monotonic() < deadline:
                body = {"model": models[(i + n) % len(models)], "max_tokens": max_tokens, "temperature": 0.7,
                        "seed": i * 1000 + n, "stream": True, "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": QUESTIONS[(i + n) % len(QUESTIONS)]}]}
                n += 1
                try:
                    once = stream_once if i % 2 == 0 else complete_once
                    status, done, latency, first, tokens, why = once(c, url, body, api_key)
                except httpx.HTTPError as e:
                    status, done, latency, first, tokens, why = 0, False, 0.0, None, 0, f"{type(e).__name__}: {e}"
                with result.lock:
                    result.requests += 1
                    result.status[status] = result.status.get(status, 0) + 1
                    result.completed += done
                    result.tokens += tokens
                    if done:
                        result.latencies.append(latency)
                        result.first_chunk.append(first or latency)
                    else:
                        result.failures.append(why)

    def abuse_loop() -> None:
        with httpx.Client(timeout=timeout) as c:
            k = 0
            while abuse and time.monotonic() < deadline:
                case = abuse[k % len(abuse)]
                k += 1
                try:
                    status, error = send_abuse(c, url, case, api_key)
                except httpx.HTTPError as e:
                    status, error = 0, {"message": str(e)}
                with result.lock:
                    result.abuse_sent += 1
                    if status != case.status or error is None:
                        result.abuse_wrong.append(f"{case.name}: HTTP {status} {error}")
                time.sleep(0.02)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    threads.append(threading.Thread(target=abuse_loop, daemon=True))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline + timeout - time.monotonic()))
    result.seconds = time.monotonic() - started
    result.hung = sum(t.is_alive() for t in threads)
    return result


def report(result: LoadResult) -> str:
    s = result.summary()
    return (f"{s['clients']} clients (half streaming) for {s['seconds']} s: {s['requests']} requests, "
            f"{s['streams_completed']} streams completed, {s['errors_5xx']} 5xx, {s['other_failures']} other failures; "
            f"latency p50 {s['latency_p50_s'] * 1000:.0f} ms, p95 {s['latency_p95_s'] * 1000:.0f} ms "
            f"(first content p50 {s['first_chunk_p50_s'] * 1000:.0f} ms), {s['tokens_per_s']} tokens/s; "
            f"{s['abuse_sent']} malformed requests sent alongside, {s['abuse_wrong']} not answered with their 4xx")


# ------------------------------------------------------------------ the command


def main() -> int:
    args = _args()
    import torch

    torch.set_num_threads(args.threads)
    from tunesmith.config import ServeConfig
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine
    from tunesmith.serve.server import start_in_thread

    with tempfile.TemporaryDirectory(prefix="tunesmith-serve-load-") as scratch:
        engine = Engine.load([], base=args.model or str(_tiny_model(Path(scratch))))
        model = engine.names[0]
        cfg = ServeConfig(api_key="load-test-key", max_tokens_limit=256, max_body_bytes=200_000)
        server = start_in_thread(create_app(engine, cfg))
        try:
            abuse = [] if args.no_abuse else abuse_cases(model, cfg.max_tokens_limit, cfg.max_body_bytes)
            result = run_load(server.url, [model], clients=args.clients, seconds=args.seconds,
                              max_tokens=args.max_tokens, api_key=cfg.api_key, abuse=abuse)
        finally:
            server.stop()
    print(f"model {model}, up to {args.max_tokens} new tokens a request, {args.threads} torch threads")
    print(report(result))
    for line in sorted(set(result.failures + result.abuse_wrong))[:20]:
        print("  problem:", line)
    print(json.dumps({"model": model, **result.summary()}))
    bad = result.server_errors or result.failures or result.abuse_wrong or result.hung or result.completed < args.clients
    return 1 if bad else 0


def _tiny_model(folder: Path) -> Path:
    """A random 2-layer Llama with a 400-token vocabulary (the tests' helper): fast, meaningless answers."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from deploy_helpers import build_small_vocab_model

    return build_small_vocab_model(folder / "tiny")


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model spec to serve (default: a tiny random model)")
    p.add_argument("--clients", type=int, default=32, help="concurrent streaming clients")
    p.add_argument("--seconds", type=float, default=20.0, help="how long clients keep starting requests")
    p.add_argument("--max-tokens", type=int, default=16, help="new tokens a request")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-abuse", action="store_true", help="no malformed requests alongside")
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
