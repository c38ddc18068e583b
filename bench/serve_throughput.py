"""Serving throughput: tokens/s through the tunesmith server against plain `model.generate`, same model, same prompts.

    python bench/serve_throughput.py                 # the embedded SmolLM2-135M, 64 new tokens per prompt
    python bench/serve_throughput.py --quick         # fewer tokens (a smoke run)
    python bench/serve_throughput.py --model RUN     # a run (adapter on its base) or any model spec

Three measurements on the same 8 chat prompts, greedy, the same stop tokens:
  generate   plain `model.generate`, one prompt after another (the baseline)
  server x1  the OpenAI API (streaming, via httpx), one request at a time, alternating with generate
             prompt by prompt so a busy machine slows both alike
  server x8  8 concurrent streaming requests (queued on the server's one generation worker)
New tokens/s counts generated tokens over wall time; time to first token (TTFT) is from sending
the request to its first content chunk. Prints a table, then one machine-readable JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    import torch

    torch.set_num_threads(args.threads)
    from tunesmith.config import ServeConfig
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine
    from tunesmith.serve.server import start_in_thread

    engine = Engine.load([args.model])
    name = engine.names[0]
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    server = start_in_thread(create_app(engine, ServeConfig(max_tokens_limit=max(args.max_tokens, 16))))
    try:
        _plain_generate(engine, name, messages[0], 4)  # warm-up: the first call of each path pays one-off costs
        _stream(server.url, name, messages[0], 4)
        rows = _interleaved(engine, server.url, name, messages, args.max_tokens)
        rows.append(("server x8", *_concurrent(server.url, name, messages, args.max_tokens)))
    finally:
        server.stop()
    _report(rows, name, args)


def _interleaved(engine, url, name, messages, max_tokens) -> list[tuple]:
    """generate and server x1 alternate prompt by prompt, so a busy machine slows both alike."""
    gen_tokens = gen_seconds = srv_tokens = srv_seconds = 0.0
    ttfts = []
    for m in messages:
        tokens, seconds = _plain_generate(engine, name, m, max_tokens)
        gen_tokens, gen_seconds = gen_tokens + tokens, gen_seconds + seconds
        tokens, first, seconds = _stream(url, name, m, max_tokens)
        srv_tokens, srv_seconds = srv_tokens + tokens, srv_seconds + seconds
        ttfts += [first] if first is not None else []
    return [("generate", int(gen_tokens), gen_seconds, []), ("server x1", int(srv_tokens), srv_seconds, ttfts)]


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="run name/folder or model spec")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="16 new tokens per prompt")
    args = p.parse_args()
    if args.quick:
        args.max_tokens = 16
    return args


def _plain_generate(engine, name, messages, max_tokens) -> tuple[int, float]:
    """Baseline: transformers' generate on the same model object (adapter active): (new tokens, seconds)."""
    import torch

    from tunesmith.data.render import stop_token_ids
    from tunesmith.serve.engine import _adapter

    slot = engine.slot(name)
    ids = torch.tensor([engine.chat_prompt(name, messages)])
    started = time.perf_counter()
    with _adapter(slot), torch.inference_mode():
        out = slot.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  eos_token_id=stop_token_ids(slot.tokenizer), pad_token_id=slot.tokenizer.pad_token_id)
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


def _concurrent(url, model, messages, max_tokens):
    results: list = [None] * len(messages)

    def one(i):
        results[i] = _stream(url, model, messages[i], max_tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(messages))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(r[0] for r in results), time.perf_counter() - started, [r[1] for r in results if r[1] is not None]


def _report(rows, name, args) -> None:
    print(f"model {name}, {len(PROMPTS)} prompts, up to {args.max_tokens} new tokens each, greedy, "
          f"{args.threads} torch threads")
    print(f"{'path':<11} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'TTFT p50 ms':>12} {'TTFT max ms':>12}")
    result = {"model": name, "max_tokens": args.max_tokens}
    for label, tokens, seconds, ttfts in rows:
        tps = tokens / seconds if seconds else 0.0
        p50 = statistics.median(ttfts) * 1000 if ttfts else None
        worst = max(ttfts) * 1000 if ttfts else None
        print(f"{label:<11} {tokens:>7} {seconds:>8.2f} {tps:>9.1f} {_ms(p50):>12} {_ms(worst):>12}")
        key = label.replace(" ", "_")
        result[f"{key}_tokens_per_s"] = round(tps, 2)
        if p50 is not None:
            result[f"{key}_ttft_p50_ms"] = round(p50, 1)
            result[f"{key}_ttft_max_ms"] = round(worst, 1)
    result["server_x1_vs_generate"] = round(result["server_x1_tokens_per_s"] / result["generate_tokens_per_s"], 3)
    print(json.dumps(result))


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


if __name__ == "__main__":
    sys.exit(main())
