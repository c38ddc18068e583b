"""compare, generate, chat and serve give the same greedy answer to the same prompt (issue 13).

One deliverable loader, one renderer, one engine: a run's answer cannot depend on which command
asked. A LoRA run on a tiny model (adapters that change the answers) answers one question four ways.
"""

from __future__ import annotations

import json

import pytest

from deploy_helpers import build_small_vocab_model, make_lora_run

QUESTION = "What is the capital of France?"
NEW = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("one-engine")
    base = build_small_vocab_model(root / "base")
    return make_lora_run(base, root / "run-one")


def test_compare_generate_chat_and_serve_agree(run, tmp_path):
    import httpx

    from tunesmith.config import ServeConfig
    from tunesmith.evaluate import compare
    from tunesmith.models.engine import Sampling
    from tunesmith.models.generate import generate
    from tunesmith.runs.deliverable import load_run
    from tunesmith.serve.app import create_app
    from tunesmith.serve.chat import ChatSession
    from tunesmith.serve.engine import Engine
    from tunesmith.serve.server import start_in_thread

    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": "Paris"}]}) + "\n")
    result = compare(test, run=str(run), out=tmp_path / "report", strategies="tuned", probe="none",
                     max_new_tokens=NEW, quiet=True, allow_overlap=True)
    report = json.loads((result.html.parent / "report.json").read_text())
    from_compare = report["examples"][0]["answers"]["tuned"]

    model, tok = load_run(run)
    from_generate = generate(model, tok, [{"role": "user", "content": QUESTION}], Sampling(max_tokens=NEW))

    engine = Engine.load([str(run)])
    session = ChatSession(engine, "run-one", max_tokens=NEW)
    from_chat = "".join(session.send(QUESTION)).strip()

    server = start_in_thread(create_app(engine, ServeConfig()))
    try:
        r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": "run-one", "max_tokens": NEW, "temperature": 0,
            "messages": [{"role": "user", "content": QUESTION}]})
    finally:
        server.stop()
    from_serve = r.json()["choices"][0]["message"]["content"].strip()

    assert from_compare and len({from_compare, from_generate, from_chat, from_serve}) == 1, \
        (from_compare, from_generate, from_chat, from_serve)
