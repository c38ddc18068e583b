"""The CLI shell: lazy imports, one clear line and exit code 2 for user errors, tracebacks only with --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunesmith.models.engine import Sampling
from tunesmith.models.generate import generate, stream_chat

CLI = [sys.executable, "-c", "from tunesmith.cli.main import run; run()"]


def tunesmith(*args, env=None, **kw):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def test_help_imports_no_heavy_library():
    code = ("import sys; from tunesmith.cli.main import app; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'fastapi', 'matplotlib') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_the_nouns():
    out = tunesmith("--help").stdout
    for noun in ("models", "config", "generate", "quickstart"):
        assert noun in out


def test_user_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    r = tunesmith("config", "show", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: 1 config error(s) in {bad}:")
    assert "train.lr: expected float | auto, got 'fast' (str)" in r.stderr


def test_debug_shows_the_traceback(tmp_path):
    r = tunesmith("--debug", "config", "show", str(tmp_path / "missing.yaml"))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_config_show_marks_sources(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 1.0e-3\n")
    out = tunesmith("config", "show", str(cfg), "--set", "method.r=8").stdout
    assert f"lr: 0.001    # {cfg}:2" in out
    assert "r: 8    # --set method.r=8" in out
    assert "alpha: auto\n" in out


def test_config_show_help_lists_every_key():
    out = tunesmith("config", "show", "--help").stdout
    assert "train.early_stopping_patience" in out and "peak learning rate" in out


def test_models_list_json(store_home):
    r = tunesmith("models", "list", "--json", env={"TUNESMITH_HOME": str(store_home)})
    assert r.returncode == 0
    assert json.loads(r.stdout)[0]["name"] == "smollm2-135m-instruct"


def test_models_info_unknown_name(store_home):
    r = tunesmith("models", "info", "nope", env={"TUNESMITH_HOME": str(store_home)})
    assert r.returncode == 2 and r.stderr.startswith("error: unknown model 'nope'")


def test_generate_on_tiny_model_is_deterministic(tiny_model_dir):
    from tunesmith.models.load import load_model

    model, tok = load_model(str(tiny_model_dir))
    msgs = [{"role": "user", "content": "Hello"}]
    def run(params):
        return "".join(stream_chat(model, tok, msgs, params))

    greedy = run(Sampling(max_tokens=8))
    assert greedy == run(Sampling(max_tokens=8)) and len(greedy) > 0
    sampled = run(Sampling(max_tokens=8, temperature=1.0, seed=3))
    assert sampled == run(Sampling(max_tokens=8, temperature=1.0, seed=3))
    assert sampled != greedy


def test_generate_rejects_bad_sampling_args(tiny_model_dir):
    r = tunesmith("generate", "--model", str(tiny_model_dir), "--max-new-tokens", "0", "hi")
    assert r.returncode == 2 and "--max-new-tokens must be >= 1" in r.stderr


@pytest.mark.slow
def test_embedded_model_answers_paris_and_reloads_fast():
    """End to end on the real SmolLM2: conversion is cached, greedy answer contains Paris."""
    import time

    from tunesmith.models.load import load_model

    load_model("smollm2-135m-instruct")  # converts on the first run, then cached
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct")
    reload_s = time.perf_counter() - start
    assert getattr(model.config, "quantization_config", None) is None  # trainable, no GGUF marker
    answer = generate(model, tok, [{"role": "user", "content": "What is the capital of France?"}],
                  Sampling(max_tokens=20))
    assert "Paris" in answer
    print(f"second load of the embedded model: {reload_s:.2f} s")


@pytest.mark.slow
def test_generate_cli_streams_the_embedded_model():
    r = tunesmith("generate", "What is the capital of France?", "--max-new-tokens", "16")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_the_python_api_surface_resolves():
    """Every name in tunesmith.__all__ resolves (a lazy name once pointed at a module that did not exist)."""
    import subprocess
    import sys

    import tunesmith

    for name in tunesmith.__all__:
        assert getattr(tunesmith, name) is not None, name
    star = subprocess.run([sys.executable, "-c", "from tunesmith import *; print(generate.__name__)"],
                          capture_output=True, text=True, timeout=120)
    assert star.returncode == 0 and star.stdout.strip() == "generate", star.stderr
    from pathlib import Path

    script = Path(sys.executable).with_name("tunesmith")
    for argv in ([sys.executable, "-m", "tunesmith", "--version"], [str(script), "--version"]):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == f"tunesmith {tunesmith.__version__}", (argv, out.stderr)
