"""An export's three calls into llama.cpp: its converter, its quantizer, and a check of the file in its runtime.

Each runs in a child process: llama.cpp aborts the whole process on a file it cannot read, and an
export must end in one clear line, not a dead interpreter. The converter is llama.cpp's own
`convert_hf_to_gguf.py` with its `gguf-py`, vendored under tunesmith/vendor/llama_cpp (pinned: see
PROVENANCE.md there); the quantizer and the runtime are `llama-cpp-python` (a dependency, built by
`make`), reached only through models/llama_cpp.py:

    python -m tunesmith.models.llama_cpp quantize IN OUT TYPE
    python -m tunesmith.models.llama_cpp check GGUF < request.json > answers.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from tunesmith.errors import ExportError
from tunesmith.models.llama_cpp import FTYPES, INSTALL_HINT, available

VENDOR = Path(__file__).resolve().parent.parent / "vendor" / "llama_cpp"
CONVERTER = VENDOR / "convert_hf_to_gguf.py"
CHILD = "tunesmith.models.llama_cpp"
CONVERTER_VERSION = "llama.cpp 0c1e57098 (llama-cpp-python 0.3.36 sdist)"


def convert(hf_folder: Path, out: Path, outtype: str) -> None:
    """llama.cpp's convert_hf_to_gguf.py: a Hugging Face folder -> one GGUF file of `outtype` (f32/f16/bf16/q8_0)."""
    from tunesmith.io import read_json_object

    model_type = read_json_object(Path(hf_folder) / "config.json").get("model_type", "?")
    cmd = [sys.executable, str(CONVERTER), str(hf_folder), "--outfile", str(out), "--outtype", outtype]
    _run(cmd, f"llama.cpp's converter (convert_hf_to_gguf.py) on this '{model_type}' model", timeout=None)


def quantize(src: Path, dst: Path, quant: str) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`): `src` GGUF -> `dst` of type `quant` (e.g. q4_k_m)."""
    if quant not in FTYPES:
        raise ExportError(f"llama.cpp has no quantization type '{quant}' here", f"choose from {', '.join(FTYPES)}")
    require()
    _run([sys.executable, "-m", CHILD, "quantize", str(src), str(dst), quant], "llama.cpp's quantizer", timeout=None)


def run(path: Path, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, texts: Sequence[str],
        stop_ids: Sequence[int], max_new_tokens: int) -> dict[str, Any]:
    """Load `path` in llama.cpp and report, per prompt: its greedy answer (from our prompt ids), its argmax
    when fed our reference answer (teacher forcing), and its own tokenization of the prompt text."""
    require()
    request = {"prompts": [list(p) for p in prompts], "answers": [list(a) for a in answers], "texts": list(texts),
               "stop_ids": list(stop_ids), "max_new_tokens": max_new_tokens}
    out = _run([sys.executable, "-m", CHILD, "check", str(path)], "llama.cpp", stdin=json.dumps(request), timeout=1800)
    return json.loads(out.splitlines()[-1])


def require() -> None:
    """ExportError (with how to install it) when llama-cpp-python is missing."""
    if not available():
        raise ExportError(f"GGUF export needs llama.cpp to quantize and check the file: {INSTALL_HINT}")


def _run(cmd: list[str], what: str, *, stdin: str | None = None, timeout: float | None) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}  # the converter never reaches a hub
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
