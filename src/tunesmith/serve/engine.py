"""The served models: named slots over the one generation engine (models/engine.py), and one worker thread.

No web imports here: the HTTP layer (app.py), the terminal chat and the benchmark all drive this.
Several LoRA runs on the same base share one base model in memory, and one engine: each adapter
is loaded under an internal key (`adapter-N`: peft refuses a '.' that run names may hold) and a
request names its adapter, so rows of different runs (and the base, BASE) share forward passes.
A fully fine-tuned run or a plain model has an engine of its own. The worker thread steps every
busy engine in turn; requests join and leave the running batches at token boundaries.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tunesmith.errors import ServeError
from tunesmith.models.engine import BASE, Engine as Runner, Event, Handle, Sampling, whole

MAX_BATCH = 16


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: which model, the prompt ids, and OpenAI's sampling fields (temperature 0 = greedy)."""

    model: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.max_tokens, self.temperature, self.top_p, self.seed, self.stop)


@dataclass
class Slot:
    """A servable model name: the model object (maybe shared), its engine, its adapter (None = none), tokenizer."""

    name: str
    model: Any
    tokenizer: Any
    adapter: str | None = None
    source: str = ""
    runner: Runner | None = None

    @property
    def context_length(self) -> int:
        return self.runner.context_length


class Engine:
    """Named models ready to generate. Build with `Engine.load(["run-a", "run-b"], base="smollm2-135m-instruct")`."""

    def __init__(self, slots: Sequence[Slot], *, max_batch: int = MAX_BATCH):
        self.slots = {s.name: s for s in slots}
        runners: dict[int, Runner] = {}  # one engine per model object: slots sharing a base share it
        for slot in slots:
            if id(slot.model) not in runners:
                runners[id(slot.model)] = slot.runner or Runner(slot.model, slot.tokenizer, max_batch=max_batch)
            slot.runner = runners[id(slot.model)]
        self.runners = list(runners.values())

    @classmethod
    def load(cls, specs: Sequence[str], base: str | None = None, *, dtype: str = "auto", device: str = "auto",
             max_batch: int = MAX_BATCH, engine: str = "auto") -> "Engine":
        """Runs (names or folders), GGUF exports and/or a base model; LoRA runs on the same base share its weights.

        device 'auto': a CUDA GPU when there is one (bf16), else the CPU (float32). engine 'auto':
        llama.cpp for a GGUF file or export folder, torch for the rest; 'llamacpp' also puts a GGUF
        store model on llama.cpp; 'torch' loads every GGUF through transformers (dequantized).
        """
        return cls(load_slots(specs, base, dtype=dtype, device=device, engine=engine, max_batch=max_batch),
                   max_batch=max_batch)

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def slot(self, name: str) -> Slot:
        if name not in self.slots:
            raise ServeError(f"unknown model '{name}'", f"available: {', '.join(self.slots)}")
        return self.slots[name]

    def chat_prompt(self, name: str, messages: Sequence[dict]) -> list[int]:
        """Prompt ids through the one renderer, so the model is prompted the way it was trained (a run's
        tokenizer makes its training system prompt the default: Deliverable.tokenizer)."""
        from tunesmith.data.render import render_prompt

        return render_prompt(messages, self.slot(name).tokenizer)

    def text_prompt(self, name: str, text: str) -> list[int]:
        from tunesmith.data.render import bos_prefix

        tok = self.slot(name).tokenizer
        return bos_prefix(tok) + list(tok(text, add_special_tokens=False)["input_ids"])

    def submit(self, req: GenerationRequest, sink: Callable[[Event], None]) -> Handle:
        """Queue `req` on its model's engine; `sink` gets its Events from whichever thread steps that engine."""
        slot = self.slot(req.model)
        return slot.runner.submit(req.prompt_ids, req.sampling, sink, slot.adapter)

    def stream(self, req: GenerationRequest) -> Iterator[Event]:
        """The answer's Events, stepping its engine in this thread (a Worker stepping it too is fine)."""
        slot = self.slot(req.model)
        return slot.runner.stream(req.prompt_ids, req.sampling, slot.adapter)

    def complete(self, req: GenerationRequest) -> Event:
        """The whole answer in one Event (text joined)."""
        events = list(self.stream(req))
        return whole([e.text for e in events], events[-1])


# ------------------------------------------------------------------ loading


def load_slots(specs: Sequence[str], base: str | None, *, dtype: str = "auto", device: str = "auto",
               engine: str = "auto", max_batch: int = MAX_BATCH) -> list[Slot]:
    """One Slot per run (adapters grouped on a shared base) or GGUF (on llama.cpp), plus, with `base`, the base.

    `max_batch` is the sequences a GGUF's llama.cpp context holds (the torch engines get it from `Engine`).

    Each run is resolved by the one deliverable type; LoRA runs on one base are put on ONE copy of
    it (the deliverable's own load would give each run a copy), the reason this loads bases itself.
    """
    from tunesmith.models import adapters
    from tunesmith.models.load import load_model, load_tokenizer, local_folder
    from tunesmith.runs.deliverable import resolve
    from tunesmith.models.store import ModelStore

    if engine not in ENGINES:
        raise ServeError(f"unknown engine '{engine}'", f"choose one of {', '.join(ENGINES)}")
    if not specs and not base:
        raise ServeError("nothing to serve", "name one or more runs, or a base model with --base")
    ggufs = {s: _gguf_for(s, engine) for s in [*specs, *([base] if base else [])]}
    sources = [resolve(s) for s in specs if ggufs[s] is None]
    base_name = ModelStore().resolve(base).name if base and ggufs[base] is None else None
    slots: list[Slot] = [_llama_cpp_slot(spec, path, max_batch) for spec, path in ggufs.items() if path is not None]
    _check_unique([s.name for s in slots] + [s.name for s in sources] + ([base_name] if base_name else []))
    shared: dict[Path, Any] = {}  # base folder -> the (peft) model holding every adapter on it
    for src in sources:
        if src.kind != "lora":
            model, tok = src.load(device=device, dtype=dtype)
            slots.append(Slot(src.name, model, tok, source=str(src.run_dir or src.base_folder)))
            continue
        key, adapter = src.base_folder.resolve(), f"adapter-{len(slots)}"  # a run named 'v1.2' is fine
        if key not in shared:
            model, _ = load_model(str(src.base_folder), dtype=dtype, device=device)
            shared[key] = adapters.load_adapter(model, src.final, adapter_name=adapter)
        else:
            adapters.add_adapter(shared[key], src.final, adapter)
        shared[key].eval()
        slots.append(Slot(src.name, shared[key], src.tokenizer(), adapter=adapter, source=str(src.run_dir)))
    if base_name:
        folder = local_folder(base).resolve()
        model = shared.get(folder) or load_model(str(folder), dtype=dtype, device=device)[0]
        adapter = BASE if adapters.is_peft(model) else None  # on the shared model, the base is adapters-off
        slots.append(Slot(base_name, model, load_tokenizer(folder), adapter=adapter, source=str(folder)))
    return slots


ENGINES = ("auto", "torch", "llamacpp")


def _gguf_for(spec: str, engine: str) -> Path | None:
    """The GGUF file `spec` is served from on llama.cpp, or None for the torch engine."""
    if engine == "torch":
        return None
    path = gguf_file(spec)
    if path is None and engine == "llamacpp":
        from tunesmith.errors import ModelError
        from tunesmith.models.store import ModelStore

        try:
            entry = ModelStore().resolve(spec)
        except ModelError:
            entry = None
        if entry is None or entry.kind != "gguf":
            raise ServeError(f"'{spec}' is not a GGUF file or export: llama.cpp serves GGUF",
                             f"export it first (tunesmith export {spec} --format gguf --out DIR), then serve DIR")
        path = Path(entry.path)
    return path


def _llama_cpp_slot(spec: str, path: Path, max_batch: int) -> Slot:
    """A GGUF on llama.cpp, serving up to max_batch requests at once: fewer when their KV caches, allocated whole
    at load, would pass llama_cpp.KV_BUDGET (16 x 4096 cells of an 8B model would be ~8 GB before the first
    request)."""
    from tunesmith.models.llama_cpp import LlamaCppEngine

    runner = LlamaCppEngine(path, load_gguf_tokenizer(path), max_batch=max_batch)
    return Slot(_gguf_name(spec, path), runner.model, runner.tokenizer, source=str(path), runner=runner)


def _gguf_name(spec: str, path: Path) -> str:
    """A GGUF export is served under its run's name (verification.json), a file under its stem."""
    from tunesmith.io import read_json_object

    folder = Path(spec).expanduser()
    if folder.is_dir():
        record = read_json_object(folder / "verification.json")
        return str(record.get("source") or folder.resolve().name)
    if not Path(spec).expanduser().exists():
        return spec  # a store name
    return path.stem


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ServeError(f"'{name}' is named twice", "serve each run once")
        seen.add(name)


# ------------------------------------------------------------------ the worker


class Busy(ServeError):
    """The worker's queue is full: the client should retry later (HTTP 503 with Retry-After)."""


class Worker:
    """One thread steps every busy engine in turn, so concurrent clients share batches instead of colliding.

    At most `max_queue` requests wait for a place in a batch (0 = no limit); `submit` raises Busy
    past that, so a flood of clients gets a fast refusal instead of an ever longer wait.
    """

    def __init__(self, engine: Engine, max_queue: int = 0):
        self.engine = engine
        self.max_queue = max_queue
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tunesmith-generate", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: Callable[[Event], None]) -> Handle:
        if self.max_queue and self.queued >= self.max_queue:
            raise Busy(f"{self.queued} requests are waiting (serve.max_queue)", "retry in a few seconds")
        handle = self.engine.submit(request, sink)
        with self._wake:
            self._wake.notify()
        return handle

    @property
    def queued(self) -> int:
        """Requests waiting for a place in a batch (not those generating)."""
        return sum(r.waiting for r in self.engine.runners)

    @property
    def active(self) -> int:
        return sum(r.active for r in self.engine.runners)

    def close(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._closed:
            busy = [r for r in self.engine.runners if r.busy]
            if not busy:
                with self._wake:
                    if not self._closed and not any(r.busy for r in self.engine.runners):
                        self._wake.wait(0.5)
                continue
            for runner in busy:
                try:
                    runner.step()
                except Exception as e:  # a failed pass answers the clients in it; the worker goes on
                    runner.fail(f"generation failed: {type(e).__name__}: {e}")


# ------------------------------------------------------------------ GGUF on llama.cpp


def gguf_file(spec: str | Path) -> Path | None:
    """The GGUF to serve for `spec`: a .gguf file, or a GGUF export folder (its Modelfile's file, else the
    one there is); None when `spec` is not a GGUF path."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.resolve()
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    files = sorted(p.name for p in path.glob("*.gguf"))
    if not files:
        return None
    from tunesmith.export.ollama import preferred_gguf

    return (path / preferred_gguf(files)).resolve()


def load_gguf_tokenizer(path: Path):
    """The tokenizer a GGUF is prompted with: the one a GGUF export saves beside its files, else the one in the
    GGUF itself as transformers reads it (not every converter's vocabulary reads back: a clear error then)."""
    from transformers import AutoTokenizer

    from tunesmith.models.load import load_tokenizer

    if (path.parent / "tokenizer_config.json").is_file():
        return load_tokenizer(path.parent)
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ServeError(f"{path}: transformers cannot read this GGUF's tokenizer ({str(e).splitlines()[0][:200]})",
                         "put the model's tokenizer files beside it, or serve a GGUF export folder") from None
