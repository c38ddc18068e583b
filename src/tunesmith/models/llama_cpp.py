"""The one door to llama.cpp's runtime (llama-cpp-python): serving a GGUF, quantizing, checking an export.

`LlamaCppEngine` serves a GGUF on the CPU at llama.cpp's speed. It is models/engine.Engine with the forward pass swapped: the queue, cancellation,
sampling (`pick`: the same greedy / temperature / top-p / seed rules), stop tokens and strings and
incremental text (`TextAssembler`) are the torch engine's own; only the forward pass calls
llama.cpp (llama-cpp-python's low-level API, in this process). Prompts are rendered by the one renderer with the
tokenizer read from the GGUF itself, so the ids are the ones the export verified llama.cpp reads.
Up to `max_batch` requests run at once as sequences of ONE llama.cpp context, each with a KV cache
of its own (`_Context`); each step is one `llama_decode` holding the prompts of the requests that
join and the last token of every running one (as llama.cpp's server batches), so concurrent
clients share the passes. The others wait in the queue, where the server's limits
(serve.max_queue, 503) apply as for the torch engine.

The export runs the quantizer and its check of a written file here, in a child process
(export/llama_cpp.py): llama.cpp aborts the whole process on a file it cannot read.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import weakref
from pathlib import Path
from typing import Any

from tunesmith.errors import ServeError
from tunesmith.models.engine import Engine, Handle, TextAssembler, _generator, _Row, failure

INSTALL_HINT = "llama-cpp-python is not installed: run `make install` (or pip install 'llama-cpp-python==0.3.36')"
# The KV cache a served GGUF allocates at load for its parallel sequences, each holding a whole context
# (f16 keys and values): as many sequences as serve.max_batch asks while they fit in this. At 4096 tokens
# a sequence of SmolLM2-135M takes 94 MB (16 fit), one of Llama-3-8B 512 MB (4 fit, llama.cpp server's
# default slot count). Measured on 2 cores, SmolLM2 Q4_K_M: 16 sequences against 4 served 16 clients at
# 177 against 138 tokens/s, first token p50 1.5 s against 5.8 s.
KV_BUDGET = 2 << 30
# our name -> llama.cpp's llama_ftype constant (llama-cpp-python exposes them as LLAMA_FTYPE_*)
FTYPES = {"q8_0": "MOSTLY_Q8_0", "q6_k": "MOSTLY_Q6_K", "q5_k_m": "MOSTLY_Q5_K_M", "q4_k_m": "MOSTLY_Q4_K_M",
          "q4_0": "MOSTLY_Q4_0"}


def available() -> bool:
    """Is llama-cpp-python importable (found without loading its library into this process)?"""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppEngine(Engine):
    """Engine over a GGUF file in llama.cpp: up to `max_batch` requests at once, each with `n_ctx` tokens of context.

    `n_ctx` is per request (prompt + answer, capped at the trained context); the KV cache is
    allocated whole at load, `max_batch` x `n_ctx` cells, so memory grows with both.
    """

    def __init__(self, path: str | Path, tokenizer, *, n_ctx: int = 4096, max_batch: int = 16,
                 threads: int | None = None):
        if not available():
            raise ServeError(f"serving a GGUF on llama.cpp needs llama-cpp-python: {INSTALL_HINT}")
        trained = _trained_context(path)
        n_ctx = min(n_ctx, trained) if trained else n_ctx
        context = _Context(Path(path), n_ctx, max_batch, threads or os.cpu_count() or 1)
        super().__init__(context, tokenizer, max_batch=context.n_seq)  # what fits KV_BUDGET; the rest wait
        self.batchable = True  # each sequence has its own KV stream: rows join and leave without touching the others
        self.path, self.n_ctx = Path(path), n_ctx
        self._seqs: dict[_Row, int] = {}  # each active row's llama.cpp sequence id
        weakref.finalize(self, context.close)  # freed while the interpreter is whole

    @property
    def context_length(self) -> int:
        return self.n_ctx

    def _prefill(self, handles: list[Handle]) -> None:
        """Give each joining request a free sequence; its prompt is fed in this step's one pass (`_decode`)."""
        for handle in handles:
            if len(handle.prompt_ids) >= self.n_ctx:  # this request's error event; the others join
                handle.sink(failure(ValueError(f"the prompt has {len(handle.prompt_ids)} tokens; "
                                               f"llama.cpp's context holds {self.n_ctx}")))
                continue
            row = _Row(handle, _generator("cpu", handle.sampling.seed),
                       TextAssembler(self.tokenizer, handle.sampling.stop), self.stop_ids)  # length 0: nothing fed yet
            # the lowest free id: llama.cpp batches only runs of consecutive ids in one ubatch (_Context)
            self._seqs[row] = min(set(range(self.max_batch)) - set(self._seqs.values()))
            self._rows.append(row)

    def _decode(self) -> None:
        """One pass: the prompt of every row not yet fed (length 0) and the sampled token of every running row."""
        import torch

        for row in [r for r in self._rows if r.length + 1 >= self.n_ctx]:
            self._finish(row, "length")  # its context is full: the answer ends here
        rows = list(self._rows)
        if not rows:
            return
        feeds = [row.handle.prompt_ids if row.length == 0 else [row.next_token] for row in rows]
        logits = self.model.decode([(self._seqs[r], r.length, f) for r, f in zip(rows, feeds)])
        self.passes += 1
        for row, fed, row_logits in zip(rows, feeds, logits):
            row.length += len(fed)
            self._take(row, torch.from_numpy(row_logits))

    def _drop(self, leaving: list[_Row]) -> None:
        """Take rows out of the batch and their cells out of the KV cache, so the next request reuses the sequence."""
        for row in leaving:
            if row in self._seqs:
                self.model.forget(self._seqs.pop(row))
        self._rows = [r for r in self._rows if r not in leaving]

    def fail(self, message: str) -> None:
        """The base's, then an empty KV cache: a failed llama_decode may leave part of its batch in it."""
        super().fail(message)
        self._seqs.clear()
        self.model.clear()


def model_params(defaults=None):
    """llama.cpp's default model parameters, less the extra weight buffers (AMX, CPU repack) on a CPU with AMX.

    llama-cpp-python 0.3.36 built on an AMX CPU (Intel Sapphire Rapids and later) puts quantized weights in
    ggml's AMX buffers, and its first llama_decode then segfaults (measured 2026-12-03 on SmolLM2's own Q4_1
    GGUF and on Q4_K_M exports, 1 or 2 threads): llama.cpp's ggml-org/llama.cpp#20824, unfixed in 0.3.36.
    Plain CPU buffers run the kernels llama.cpp uses on every other CPU; on those the defaults stay
    (repacking speeds up Q4_0 there).
    """
    import llama_cpp

    params = (defaults or llama_cpp.llama_model_default_params)()
    if b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info():
        params.use_extra_bufts = False
    return params


def open_llama(path: str | Path, **kwargs: Any):
    """`llama_cpp.Llama(model_path=path, **kwargs)` loaded with `model_params()`: how tunesmith and its tests
    open a GGUF in llama-cpp-python's high-level API (its Llama class takes no model parameters of this kind)."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    default = low.llama_model_default_params
    low.llama_model_default_params = lambda: model_params(default)  # what Llama.__init__ starts from
    try:
        return llama_cpp.Llama(model_path=str(path), **kwargs)
    finally:
        low.llama_model_default_params = default


class _Context:
    """A GGUF's weights and one llama.cpp context of up to `n_seq` sequences (as many as fit KV_BUDGET, at least
    one), each with `n_ctx` KV cells of its own.

    kv_unified=False: llama.cpp splits the context's n_ctx into n_seq_max streams (n_ctx_seq, rounded
    up to 256), so the context is made n_ctx x n_seq and every sequence can always use its whole
    share: no request runs out of cells because of the others, and a token's attention reads only
    its own sequence's cells (kv_unified=True, one pool as llama.cpp's server has with its automatic
    slot count, lets a sequence use what others leave free, but the pool can fill up mid-answer).
    llama.cpp puts only runs of consecutive sequence ids in one ubatch of separate streams
    (split_equal), so tokens go in id order and the engine hands out the lowest free id.
    Flash attention is off, as `Llama` has it, so the numerics are the ones the export's check
    measured (on the test model it moves logits by ~1e-2). A sequence's logits in a batch are then
    bit-identical to its logits alone (tests/test_serve_llama_cpp.py pins it).
    """

    def __init__(self, path: Path, n_ctx: int, n_seq: int, threads: int):
        import llama_cpp

        llama_cpp.llama_backend_init()
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load log, as Llama(verbose=False)
        self.batch = self.ctx = None
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params())
        if not self.model:  # llama.cpp's reason is on stderr
            raise ServeError(f"llama.cpp cannot load {path}", "check the file with `tunesmith export` again")
        self.n_seq = n_seq = max(1, min(n_seq, KV_BUDGET // _kv_bytes(self.model, path, n_ctx)))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * n_seq, n_seq, False
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # the verified numerics (see above)
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            self.close()
            raise ServeError(f"llama.cpp cannot make a context of {n_seq} sequences x {n_ctx} tokens for {path}",
                             "serve fewer requests at once (serve.max_batch) or give them less context")
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)  # tokens one llama_decode takes (more aborts the process)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))

    def decode(self, feeds: list[tuple[int, int, list[int]]]) -> list[Any]:
        """Feed each (sequence id, position of its first token, tokens); the logits (V,) after each one's last token.

        In input order, as numpy arrays; the tokens go in sequence-id order, n_batch at a time.
        """
        order = sorted(range(len(feeds)), key=lambda k: feeds[k][0])
        cells = [(k, feeds[k][0], feeds[k][1] + i, token, i == len(feeds[k][2]) - 1)
                 for k in order for i, token in enumerate(feeds[k][2])]  # (feed, seq, pos, token, wants logits)
        logits: list[Any] = [None] * len(feeds)
        for start in range(0, len(cells), self.n_batch):
            chunk = cells[start:start + self.n_batch]
            self._run(chunk)
            for i, (k, *_, last) in enumerate(chunk):
                if last:
                    logits[k] = self._logits(i)
        return logits

    def _run(self, cells: list[tuple]) -> None:
        """One llama_decode of `cells`; it returns non-zero for a bad batch (-1) or no free cells (1): raised."""
        import llama_cpp

        batch = self.batch
        batch.n_tokens = len(cells)
        for i, (_, seq, pos, token, last) in enumerate(cells):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, last
            batch.seq_id[i][0] = seq
        rc = llama_cpp.llama_decode(self.ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for {len(cells)} tokens")

    def _logits(self, i: int) -> Any:
        """Batch entry i's logits (V,), copied: llama.cpp reuses the buffer on the next decode."""
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def forget(self, seq: int) -> None:
        """Remove a sequence's cells from the KV cache, so the id can serve another request."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def clear(self) -> None:
        """Empty the KV cache of every sequence."""
        import llama_cpp

        llama_cpp.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        """Free the batch, the context, then the model (in that order); a second call does nothing."""
        import llama_cpp

        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
        if self.model:
            llama_cpp.llama_model_free(self.model)
        self.batch = self.ctx = self.model = None


def _kv_bytes(model, path: Path, n_ctx: int) -> int:
    """The f16 KV cache of one sequence of `n_ctx` tokens: layers x kv heads x (key + value width) x 2 bytes.

    Head widths from the GGUF (`ARCH.attention.key_length`, Gemma's 256 is not width / heads), else
    width / heads; sliding-window layers are counted whole, so this is an upper bound."""
    import llama_cpp

    from tunesmith.models.load import gguf_fields

    fields = gguf_fields(path)
    arch = fields.get("general.architecture")
    head = llama_cpp.llama_model_n_embd(model) // max(1, llama_cpp.llama_model_n_head(model))
    widths = sum(int(fields.get(f"{arch}.attention.{k}_length") or head) for k in ("key", "value"))
    return max(1, llama_cpp.llama_model_n_layer(model) * llama_cpp.llama_model_n_head_kv(model) * widths * 2 * n_ctx)


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
    import numpy as np

    req = json.load(sys.stdin)
    longest = max([len(p) + len(a) for p, a in zip(req["prompts"], req["answers"])] + [1])
    n_ctx = max(256, longest + req["max_new_tokens"] + 8)
    llm = open_llama(path, n_ctx=n_ctx, n_threads=os.cpu_count() or 1, logits_all=True, verbose=False)
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
