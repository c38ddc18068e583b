"""The one place tunesmith talks to llama.cpp: its converter, its quantizer, and its runtime (answers and logits).

Each runs in a child process: llama.cpp aborts the whole process on a file it cannot read, and an
export must end in one clear line, not a dead interpreter. The converter is llama.cpp's own
`convert_hf_to_gguf.py` with its `gguf-py`, vendored under tunesmith/vendor/llama_cpp (pinned: see
PROVENANCE.md there); the quantizer and runtime are `llama-cpp-python` (a dependency, built by `make`).

    python -m tunesmith.export.llama_cpp quantize IN OUT TYPE
    python -m tunesmith.export.llama_cpp run GGUF < request.json > answers.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from tunesmith.errors import ExportError

VENDOR = Path(__file__).resolve().parent.parent / "vendor" / "llama_cpp"
CONVERTER = VENDOR / "convert_hf_to_gguf.py"
CONVERTER_VERSION = "llama.cpp 0c1e57098 (llama-cpp-python 0.3.36 sdist)"
INSTALL_HINT = "llama-cpp-python is not installed: run `make install` (or pip install 'llama-cpp-python==0.3.36')"

# our name -> llama.cpp's llama_ftype constant (llama-cpp-python exposes them as LLAMA_FTYPE_*)
FTYPES = {"q8_0": "MOSTLY_Q8_0", "q6_k": "MOSTLY_Q6_K", "q5_k_m": "MOSTLY_Q5_K_M", "q4_k_m": "MOSTLY_Q4_K_M",
          "q4_0": "MOSTLY_Q4_0"}


def available() -> bool:
    """Is llama-cpp-python importable (without loading its library in this process)?"""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def convert(hf_folder: Path, out: Path, outtype: str) -> None:
    """llama.cpp's convert_hf_to_gguf.py: a Hugging Face folder -> one GGUF file of `outtype` (f32/f16/bf16/q8_0)."""
    cmd = [sys.executable, str(CONVERTER), str(hf_folder), "--outfile", str(out), "--outtype", outtype]
    _run(cmd, "llama.cpp's converter (convert_hf_to_gguf.py)", timeout=None)


def quantize(src: Path, dst: Path, quant: str) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`): `src` GGUF -> `dst` of type `quant` (e.g. q4_k_m)."""
    if quant not in FTYPES:
        raise ExportError(f"llama.cpp has no quantization type '{quant}' here", f"choose from {', '.join(FTYPES)}")
    require()
    _run([sys.executable, "-m", __name__, "quantize", str(src), str(dst), quant], "llama.cpp's quantizer", timeout=None)


def run(path: Path, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, texts: Sequence[str],
        stop_ids: Sequence[int], max_new_tokens: int) -> dict[str, Any]:
    """Load `path` in llama.cpp and report, per prompt: its greedy answer (from our prompt ids), its argmax
    when fed our reference answer (teacher forcing), and its own tokenization of the prompt text."""
    require()
    request = {"prompts": [list(p) for p in prompts], "answers": [list(a) for a in answers], "texts": list(texts),
               "stop_ids": list(stop_ids), "max_new_tokens": max_new_tokens}
    out = _run([sys.executable, "-m", __name__, "run", str(path)], "llama.cpp", stdin=json.dumps(request), timeout=1800)
    return json.loads(out.splitlines()[-1])


def require() -> None:
    if not available():
        raise ExportError(f"GGUF export needs llama.cpp to quantize and check the file: {INSTALL_HINT}")


def _run(cmd: list[str], what: str, *, stdin: str | None = None, timeout: float | None) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own pinned gguf-py, not the installed one
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{what} did not finish in {timeout:.0f} s") from None
    if done.returncode != 0:
        raise ExportError(f"{what} failed: {_last_error(done.stderr or done.stdout)}",
                          "nothing was written; run with --debug and report this if the model loads in transformers")
    return done.stdout


def _last_error(text: str) -> str:
    """The line that says what went wrong (a Python exception, or llama.cpp's own error), not the traceback."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for marker in ("Error:", "error:", "error ", "failed", "NotImplementedError", "KeyError", "ValueError"):
        hits = [ln for ln in lines if marker in ln and not ln.startswith("File ")]
        if hits:
            return hits[-1][:400]
    return (lines[-1] if lines else "no output")[:400]


# ------------------------------------------------------------------ child process side


def _child_quantize(src: str, dst: str, quant: str) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{FTYPES[quant]}")
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"error: llama_model_quantize returned {rc}")


def _child_run(path: str) -> None:
    import llama_cpp
    import numpy as np

    req = json.load(sys.stdin)
    longest = max([len(p) + len(a) for p, a in zip(req["prompts"], req["answers"])] + [1])
    n_ctx = max(256, longest + req["max_new_tokens"] + 8)
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=os.cpu_count() or 1, logits_all=True,
                          verbose=False)
    stops = set(req["stop_ids"])
    generated, forced, tokenized = [], [], []
    for prompt, answer, text in zip(req["prompts"], req["answers"], req["texts"]):
        out: list[int] = []
        llm.reset()
        for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
            out.append(int(token))  # like transformers, the answer includes the stop token it ended on
            if token in stops or len(out) >= req["max_new_tokens"]:
                break
        generated.append(out)
        llm.reset()
        llm.eval(prompt + answer)
        scores = np.asarray(llm.scores[len(prompt) - 1:len(prompt) + len(answer)])
        forced.append([int(i) for i in scores.argmax(-1)])
        tokenized.append(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
    meta = {k: v for k, v in llm.metadata.items() if k.startswith(("general.architecture", "tokenizer.ggml.pre"))}
    print(json.dumps({"generated": generated, "forced_argmax": forced, "tokenized": tokenized,
                      "chat_template": llm.metadata.get("tokenizer.chat_template"), "metadata": meta}))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"quantize": _child_quantize, "run": _child_run}[command](*args)
