"""Shared fixtures: a tiny Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer, and an isolated store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "smollm2-tokenizer"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The embedded model's converted cache persists here across runs (it takes ~20 s to build).
os.environ.setdefault("TUNESMITH_HOME", str(ROOT / ".tunesmith-home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed (an extra, installed for the sharded tests) logs its accelerator choice to stdout when it
# has to guess; named, it is quiet. The tests' machines have no GPU (tests/test_cuda.py skips there).
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer Llama (hidden 64) with the real tokenizer into `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def peak_weights(model, seed: int | None = None) -> None:
    """Larger weights than the default init give peaked, varied greedy answers (not one repeated token).

    `seed` reseeds first; without it the draws continue torch's current random stream.
    """
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny model folder (read-only by convention: copy it before changing it)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tokenizer():
    from tunesmith.models.load import load_tokenizer

    return load_tokenizer(TOKENIZER_DIR)


@pytest.fixture
def store_home(tmp_path, monkeypatch) -> Path:
    """An empty $TUNESMITH_HOME for tests that add or remove models or runs."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNESMITH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is several times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the architecture matrix's record

MATRIX_CELLS: dict[str, dict] = {}  # "arch/step" -> outcome; filled by the reports of test_arch_matrix.py
MATRIX_ROWS: dict[str, dict] = {}  # arch -> what the row is (model type, tokenizer, template, note)


def pytest_runtest_logreport(report):
    """Each matrix cell's outcome: Y, the refusal tunesmith gave, skipped (with why) or failed (with the error line)."""
    props = dict(report.user_properties)
    if "matrix_cell" not in props or (report.when != "call" and report.passed):
        return
    arch, step = props["matrix_cell"]
    MATRIX_ROWS[arch] = props["matrix_row"]
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        cell = {"outcome": "pending" if "pending" in reason else "skipped", "detail": reason.removeprefix("Skipped: ")}
    elif report.failed:
        cell = {"outcome": "failed", "detail": _first_error_line(report)}
    elif "matrix_refusal" in props:
        cell = {"outcome": "refused", "detail": props["matrix_refusal"]}
    else:
        cell = {"outcome": "Y", "detail": ""}
    cell["seconds"] = round(report.duration, 1)
    MATRIX_CELLS[f"{arch}/{step}"] = cell


def _first_error_line(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    return (crash.message if crash else str(report.longrepr)).strip().splitlines()[0][:200]


def pytest_sessionfinish(session):
    """With TUNESMITH_MATRIX_JSON set, merge this session's cells into that file (tools/models_table.py reads it)."""
    import json

    path = os.environ.get("TUNESMITH_MATRIX_JSON")
    if not path or not MATRIX_CELLS:
        return
    import transformers

    target = Path(path)
    old = json.loads(target.read_text()) if target.is_file() else {}
    record = {"transformers": transformers.__version__, "rows": {**old.get("rows", {}), **MATRIX_ROWS},
              "cells": {**old.get("cells", {}), **MATRIX_CELLS}}  # a rerun of some cells keeps the others
    target.write_text(json.dumps(record, indent=1) + "\n")


@pytest.fixture(scope="session")
def browser():
    """The session's one headless Chromium for the browser tests (skips with the reason without one)."""
    from ui_helpers import launch_browser

    yield from launch_browser()
