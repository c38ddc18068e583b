"""The one door to llama.cpp's runtime (llama-cpp-python): serving a GGUF, quantizing, checking an export.

`LlamaCppEngine` serves a GGUF on the CPU at llama.cpp's speed. It is models/engine.Engine with the forward pass swapped: the queue, cancellation,
sampling (`pick`: the same greedy / temperature / top-p / seed rules), stop tokens and strings and
incremental text (`TextAssembler`) are the torch engine's own; only prefill and decode call
llama.cpp (llama-cpp-python, in this process). Prompts are rendered by the one renderer with the
tokenizer read from the GGUF itself, so the ids are the ones the export verified llama.cpp reads.
One sequence runs at a time (llama-cpp-python's `Llama` holds one sequence); the others wait in the
queue, where the server's limits (serve.max_queue, 503) apply as for the torch engine.

The export runs the quantizer and its check of a written file here, in a child process
(export/llama_cpp.py): llama.cpp aborts the whole process on a file it cannot read.
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from pathlib import Path
from typing import Any

from tunesmith.errors import ServeError
from tunesmith.models.engine import Engine, Handle, TextAssembler, _generator, _Row

INSTALL_HINT = "llama-cpp-python is not installed: run `make install` (or pip install 'llama-cpp-python==0.3.36')"
# our name -> llama.cpp's llama_ftype constant (llama-cpp-python exposes them as LLAMA_FTYPE_*)
FTYPES = {"q8_0": "MOSTLY_Q8_0", "q6_k": "MOSTLY_Q6_K", "q5_k_m": "MOSTLY_Q5_K_M", "q4_k_m": "MOSTLY_Q4_K_M",
          "q4_0": "MOSTLY_Q4_0"}


def available() -> bool:
    """Is llama-cpp-python importable (found without loading its library into this process)?"""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppEngine(Engine):
    """Engine over a GGUF file in llama.cpp. `n_ctx` tokens of context (prompt + answer) per request."""

    def __init__(self, path: str | Path, tokenizer, *, n_ctx: int = 4096, threads: int | None = None):
        if not available():
            raise ServeError(f"serving a GGUF on llama.cpp needs llama-cpp-python: {INSTALL_HINT}")
        import llama_cpp

        trained = _trained_context(path)
        n_ctx = min(n_ctx, trained) if trained else n_ctx
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count() or 1,
                                  verbose=False)
        except Exception as e:  # llama-cpp-python raises ValueError with llama.cpp's reason on stderr
            raise ServeError(f"llama.cpp cannot load {path} ({e})", "check the file with `tunesmith export` again") from None
        super().__init__(llm, tokenizer, max_batch=1)
        self.path, self.n_ctx, self.n_vocab = Path(path), n_ctx, llm.n_vocab()
        weakref.finalize(self, llm.close)  # freed while the interpreter is whole (its __del__ at exit raises)

    @property
    def context_length(self) -> int:
        return self.n_ctx

    def _prefill(self, handles: list[Handle]) -> None:
        (handle,) = handles  # max_batch is 1: llama-cpp-python's Llama holds one sequence
        if len(handle.prompt_ids) >= self.n_ctx:
            raise ValueError(f"the prompt has {len(handle.prompt_ids)} tokens; llama.cpp's context holds {self.n_ctx}")
        self.model.reset()
        self.model.eval(handle.prompt_ids)
        row = _Row(handle, _generator("cpu", handle.sampling.seed), TextAssembler(self.tokenizer, handle.sampling.stop),
                   self.stop_ids, length=len(handle.prompt_ids))
        self._rows.append(row)
        self._take(row, self._logits())

    def _decode(self) -> None:
        (row,) = self._rows
        if row.length + 1 >= self.n_ctx:  # the context is full: the answer ends here
            return self._finish(row, "length")
        self.model.eval([row.next_token])
        self.passes += 1
        row.length += 1
        self._take(row, self._logits())

    def _drop(self, leaving: list[_Row]) -> None:
        self._rows = [r for r in self._rows if r not in leaving]

    def _logits(self) -> Any:
        """The last position's logits as a torch tensor (V,), for the shared sampler."""
        import llama_cpp
        import numpy as np
        import torch

        pointer = llama_cpp.llama_get_logits_ith(self.model.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy())


def _trained_context(path: str | Path) -> int | None:
    """The context length the GGUF says the model was trained for."""
    from tunesmith.models.load import read_gguf

    value = read_gguf(Path(path)).get("context_length")
    return int(value) if value else None


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


def _child_check(path: str) -> None:
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
    {"quantize": _child_quantize, "check": _child_check}[command](*args)
