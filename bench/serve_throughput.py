"""Serving throughput: the tunesmith server against plain `model.generate` on the same model and prompts, in one run.

    python bench/serve_throughput.py                 # the embedded SmolLM2-135M, 64 new tokens per request
    python bench/serve_throughput.py --quick         # 16 new tokens, clients 1/4/8 (a smoke run)
    python bench/serve_throughput.py --model RUN     # a run (adapter on its base) or any model spec
    python bench/serve_throughput.py --gguf DIR      # also the llama.cpp engine on a GGUF export of the model

Measured, greedy, with the same stop tokens and a fixed answer length (`--max-tokens`, with the
end-of-turn token ignored on both sides so every answer is exactly that long and the paths do the
same work):
  generate     plain transformers `model.generate`, one prompt after another (the baseline a user has)
  server x1    the OpenAI API (streaming, via httpx) of a server in a process of its own, as `tunesmith
               serve` runs it, one request at a time, alternating with generate prompt by prompt so a
               busy machine slows both alike
  server xN    N concurrent streaming clients (N in --clients), each sending its prompts back to back
  llama.cpp    with --gguf: the same API served on llama.cpp (`serve.engine: llamacpp`) from a GGUF
               export (e.g. Q4_K_M), x1 alternating with generate again, then xN
Aggregate tokens/s counts every generated token over wall time; time to first token (TTFT) is from
sending a request to its first content chunk (p50 and p95 over all requests). Prints a table, the
ratios (server x1 / generate, server x8 / server x1), and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "List three colours.",
    "How do I reset my password?",
    "Explain what a building permit is.",
    "Give me a tip for learning to cook.",
    "What does a librarian do?",
    "Describe a sunny morning.",
]


def main() -> None:
    args = _args()
    if args.serve_child:
        return _serve_child(args)
    import torch

    torch.set_num_threads(args.threads)
    from tunesmith.serve.engine import Engine

    engine = Engine.load([args.model], max_batch=max(args.clients))  # the plain-generate baseline, in this process
    name = engine.names[0]
    _never_stop(engine)
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    _plain_generate(engine, name, messages[0], 4)  # warm-up: the first call of each path pays one-off costs
    rows = _server_rows(engine, name, messages, args.model, "torch", "server", args)
    if args.gguf:
        more = _server_rows(engine, name, messages, args.gguf, "llamacpp", "llama.cpp", args)
        rows += [("generate'", *more[0][1:]), *more[1:]]  # the baseline again, measured beside llama.cpp
    _report(rows, name, args)


def _server_rows(engine, name, messages, spec: str, kind: str, label: str, args) -> list[tuple]:
    """`spec` served on the `kind` engine: generate and one client alternating (x1), then each xN."""
    with _server(spec, kind, args) as (url, served):
        rows = _interleaved(engine, name, url, served, messages[:args.prompts], args.max_tokens, f"{label} x1")
        for n in args.clients:
            if n > 1:
                rows.append((f"{label} x{n}", *_concurrent(url, served, messages, args.max_tokens, n, args.prompts)))
    return rows


@contextlib.contextmanager
def _server(spec: str, engine: str, args):
    """The server in a process of its own, as `tunesmith serve` runs (uvicorn in the main thread, one generating
    thread): (url, served model name). In this process its generating thread would be a second OpenMP
    master beside the one running `generate`, and libgomp then cuts its threads' spinning to ~1000 turns
    whenever it manages more threads than there are cores: measured on 2 cores, llama.cpp x1 fell from
    64 to 24 tokens/s that way, which no user process serving a model sees."""
    cmd = [sys.executable, os.path.abspath(__file__), "--serve-child", spec, "--engine", engine,
           "--threads", str(args.threads), "--clients", ",".join(map(str, args.clients)),
           "--max-tokens", str(args.max_tokens)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().split()  # "NAME PORT" once it listens
        if len(line) != 2:
            raise SystemExit(f"the {engine} server for {spec} did not start (exit {child.wait()})")
        url = f"http://127.0.0.1:{line[1]}"
        _stream(url, line[0], [{"role": "user", "content": PROMPTS[0]}], 4)  # warm-up
        yield url, line[0]
    finally:
        child.terminate()
        child.wait(30)


def _serve_child(args) -> None:
    """--serve-child SPEC: load it, never stop early, listen on a free port, print "NAME PORT", serve."""
    import torch

    torch.set_num_threads(args.threads)
    from tunesmith.config import ServeConfig
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine
    from tunesmith.serve.server import bind, uvicorn_server

    engine = Engine.load([args.serve_child], engine=args.engine, max_batch=max(args.clients))
    _never_stop(engine)
    cfg = ServeConfig(max_tokens_limit=max(args.max_tokens, 16), max_batch=max(args.clients), max_queue=0)
    sock = bind("127.0.0.1", 0)
    app = create_app(engine, cfg)
    print(engine.names[0], sock.getsockname()[1], flush=True)
    uvicorn_server(app).run(sockets=[sock])


def _never_stop(engine) -> None:
    """Every answer runs to max_tokens on both paths (the stop tokens are still decoded, never obeyed)."""
    for runner in engine.runners:
        runner.stop_ids = frozenset()


def _interleaved(engine, name, url, served, messages, max_tokens, label) -> list[tuple]:
    """generate (on `engine`'s `name`) and one server client (`served` at `url`) alternate prompt by prompt,
    so a busy machine slows both alike."""
    gen_tokens = gen_seconds = srv_tokens = srv_seconds = 0.0
    ttfts = []
    for m in messages:
        tokens, seconds = _plain_generate(engine, name, m, max_tokens)
        gen_tokens, gen_seconds = gen_tokens + tokens, gen_seconds + seconds
        tokens, first, seconds = _stream(url, served, m, max_tokens)
        srv_tokens, srv_seconds = srv_tokens + tokens, srv_seconds + seconds
        ttfts += [first] if first is not None else []
    return [("generate", int(gen_tokens), gen_seconds, []), (label, int(srv_tokens), srv_seconds, ttfts)]


def _plain_generate(engine, name, messages, max_tokens) -> tuple[int, float]:
    """Baseline: transformers' generate on the same model object (the slot's adapter active): (new tokens, s)."""
    import torch

    slot = engine.slot(name)
    ids = torch.tensor([engine.chat_prompt(name, messages)], device=slot.model.device)
    if slot.adapter and hasattr(slot.model, "set_adapter"):
        slot.model.set_adapter(slot.adapter)
    started = time.perf_counter()
    with torch.inference_mode():
        out = slot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                  min_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=slot.tokenizer.pad_token_id)
    return out.shape[1] - ids.shape[1], time.perf_counter() - started


def _stream(url, model, messages, max_tokens):
    """One streaming chat request: (completion tokens, seconds to first content, total seconds)."""
    import httpx

    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - t0
    return tokens, first, time.perf_counter() - t0


def _concurrent(url, model, messages, max_tokens, clients: int, per_client: int):
    """`clients` threads, each streaming `per_client` prompts back to back: (tokens, seconds, TTFTs)."""
    results: list[list] = [[] for _ in range(clients)]

    def one(i):
        for k in range(per_client):
            results[i].append(_stream(url, model, messages[(i + k) % len(messages)], max_tokens))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = [r for rs in results for r in rs]
    return sum(r[0] for r in done), time.perf_counter() - started, [r[1] for r in done if r[1] is not None]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[max(0, math.ceil(q / 100 * len(values)) - 1)]  # nearest rank


def _report(rows, name, args) -> None:
    print(f"model {name}, {args.max_tokens} new tokens per request, greedy, {args.threads} torch threads")
    print(f"{'path':<11} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12}")
    result = {"model": name, "max_tokens": args.max_tokens, "threads": args.threads}
    for label, tokens, seconds, ttfts in rows:
        tps = tokens / seconds if seconds else 0.0
        p50, p95 = _percentile(ttfts, 50), _percentile(ttfts, 95)
        print(f"{label:<11} {tokens:>7} {seconds:>8.2f} {tps:>9.1f} {_ms(p50):>12} {_ms(p95):>12}")
        key = label.replace(" ", "_")
        result[f"{key}_tokens_per_s"] = round(tps, 2)
        if p50 is not None:
            result[f"{key}_ttft_p50_ms"] = round(p50 * 1000, 1)
            result[f"{key}_ttft_p95_ms"] = round(p95 * 1000, 1)
    x1 = result["server_x1_tokens_per_s"]
    result["server_x1_vs_generate"] = round(x1 / result["generate_tokens_per_s"], 3)
    for n in args.clients:
        if n > 1:
            result[f"server_x{n}_vs_x1"] = round(result[f"server_x{n}_tokens_per_s"] / x1, 3)
    if args.gguf:
        result["llama.cpp_x1_vs_generate"] = round(result["llama.cpp_x1_tokens_per_s"] / result["generate'_tokens_per_s"], 3)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items() if k.endswith(("_vs_generate", "_vs_x1"))))
    print(json.dumps(result))


def _ms(v) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="run name/folder or model spec")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per request")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--clients", default="1,4,8,16", help="concurrency levels, comma-separated")
    p.add_argument("--prompts", type=int, default=4, help="requests per client (and prompts in the x1 run)")
    p.add_argument("--gguf", default=None, help="a GGUF export (folder or .gguf) of the model, served on llama.cpp")
    p.add_argument("--quick", action="store_true", help="16 new tokens, clients 1,4,8, 2 requests each")
    p.add_argument("--serve-child", default=None, help=argparse.SUPPRESS)  # the server process (_server)
    p.add_argument("--engine", default="torch", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.max_tokens, args.clients, args.prompts = 16, "1,4,8", 2
    args.clients = [int(c) for c in str(args.clients).split(",") if c.strip()]
    return args


if __name__ == "__main__":
    sys.exit(main())
