"""The serving engine: models and their adapters in memory, token-by-token generation, and one worker thread.

No web imports here: the HTTP layer (app.py), the terminal chat and the benchmark all drive this.
Several LoRA runs on the same base share one base model in memory: each adapter is loaded under
an internal key (`adapter-N`: peft refuses a '.' that run names may hold) and chosen per request
with `set_adapter` (or `disable_adapter()` for the base).
Generation is an explicit decode loop over the KV cache, so each step can check whether its client
is still there, sample with a per-request generator (a seed never touches global RNG), and stop on
stop strings.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tunesmith.errors import ServeError


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


@dataclass
class Event:
    """A piece of an answer. The last one has `finish_reason` ('stop' | 'length') and the token counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Slot:
    """A servable model name: the model object (maybe shared), its adapter name (None = no adapter), tokenizer."""

    name: str
    model: Any
    tokenizer: Any
    adapter: str | None = None
    source: str = ""

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)


class Engine:
    """Named models ready to generate. Build with `Engine.load(["run-a", "run-b"], base="smollm2-135m-instruct")`."""

    def __init__(self, slots: Sequence[Slot]):
        self.slots = {s.name: s for s in slots}
        self._lock = threading.Lock()  # adapters are switched on shared weights: one generation at a time

    @classmethod
    def load(cls, specs: Sequence[str], base: str | None = None, *, dtype: str = "auto") -> "Engine":
        """Runs (names or folders) and/or a base model; LoRA runs on the same base share its weights."""
        return cls(load_slots(specs, base, dtype=dtype))

    @property
    def names(self) -> list[str]:
        return list(self.slots)

    def slot(self, name: str) -> Slot:
        if name not in self.slots:
            raise ServeError(f"unknown model '{name}'", f"available: {', '.join(self.slots)}")
        return self.slots[name]

    def chat_prompt(self, name: str, messages: Sequence[dict]) -> list[int]:
        """Prompt ids through the one renderer, so the model is prompted the way it was trained."""
        from tunesmith.data.render import render_prompt

        return render_prompt(messages, self.slot(name).tokenizer)

    def text_prompt(self, name: str, text: str) -> list[int]:
        tok = self.slot(name).tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
            ids = [tok.bos_token_id] + ids
        return list(ids)

    def stream(self, req: GenerationRequest, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        """Yield the answer as text pieces; the last event carries finish_reason and token counts."""
        from tunesmith.data.render import stop_token_ids

        slot = self.slot(req.model)
        stop_ids = set(stop_token_ids(slot.tokenizer))
        text = TextAssembler(slot.tokenizer, req.stop)
        count, finish = 0, "length"
        with self._lock, _adapter(slot):
            for token in decode(slot.model, req.prompt_ids, req, cancelled):
                count += 1
                if token in stop_ids:
                    finish = "stop"
                    break
                piece, hit = text.push(token)
                if piece:
                    yield Event(piece)
                if hit:
                    finish = "stop"
                    break
        if cancelled():
            return
        yield Event(text.flush(), finish, len(req.prompt_ids), count)

    def complete(self, req: GenerationRequest) -> Event:
        """The whole answer in one Event (text joined)."""
        parts, last = [], Event()
        for event in self.stream(req):
            parts.append(event.text)
            last = event
        return Event("".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens)


@contextlib.contextmanager
def _adapter(slot: Slot):
    """Make `slot`'s adapter the active one on the shared model, or switch adapters off for the base."""
    from tunesmith.models import adapters

    if not adapters.is_peft(slot.model):
        yield
    elif slot.adapter is None:
        with slot.model.disable_adapter():
            yield
    else:
        slot.model.set_adapter(slot.adapter)
        yield


def decode(model, prompt_ids: list[int], req: GenerationRequest, cancelled: Callable[[], bool]) -> Iterator[int]:
    """Token ids one at a time over the KV cache; stops early when `cancelled()` turns true."""
    import torch

    gen = torch.Generator(device=model.device)
    if req.seed is not None:
        gen.manual_seed(req.seed)
    else:
        gen.seed()
    ids = torch.tensor([prompt_ids], device=model.device)
    cache = None
    with torch.inference_mode():
        for _ in range(req.max_tokens):
            if cancelled():
                return
            out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            token = pick(out.logits[0, -1], req.temperature, req.top_p, gen)  # logits: (1, 1, V)
            yield token
            ids = torch.tensor([[token]], device=model.device)


GREEDY_BELOW = 1e-5  # temperatures under this are greedy decoding


def pick(logits, temperature: float, top_p: float, gen) -> int:
    """Greedy below GREEDY_BELOW; otherwise sample from the top-p nucleus of softmax(logits / temperature)."""
    import torch

    if temperature < GREEDY_BELOW:  # dividing by a tiny temperature overflows to inf/NaN probabilities
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


class TextAssembler:
    """Token ids -> text pieces, never splitting a UTF-8 character and never showing text past a stop string."""

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (new text safe to show, whether a stop string was reached)."""
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return "", False
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._take(len(self.text.rstrip("\ufffd")))

    def _held_back(self) -> int:
        """Length of the longest tail that could still grow into a stop string."""
        return max((n for s in self.stops for n in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:n])), default=0)

    def _take(self, upto: int) -> str:
        piece = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece


# ------------------------------------------------------------------ loading


def load_slots(specs: Sequence[str], base: str | None, *, dtype: str = "auto") -> list[Slot]:
    """One Slot per run (adapters grouped on a shared base) plus, with `base`, the base model itself."""
    from tunesmith.export.source import resolve
    from tunesmith.models import adapters
    from tunesmith.models.load import load_model, load_tokenizer, local_folder
    from tunesmith.models.store import ModelStore

    if not specs and not base:
        raise ServeError("nothing to serve", "name one or more runs, or a base model with --base")
    sources = [resolve(s) for s in specs]
    base_name = ModelStore().resolve(base).name if base else None  # a folder is served under its own name
    _check_unique([s.name for s in sources] + ([base_name] if base_name else []))
    slots: list[Slot] = []
    shared: dict[Path, Any] = {}  # base folder -> the (peft) model holding every adapter on it
    for src in sources:
        if src.kind != "lora":
            model, tok = load_model(str(src.weights_folder), dtype=dtype)
            slots.append(Slot(src.name, model, load_tokenizer(src.tokenizer_folder), source=str(src.run_dir or src.base_folder)))
            continue
        key, adapter = src.base_folder.resolve(), f"adapter-{len(slots)}"  # a run named 'v1.2' is fine
        if key not in shared:
            model, _ = load_model(str(src.base_folder), dtype=dtype)
            shared[key] = adapters.load_adapter(model, src.final, adapter_name=adapter)
        else:
            adapters.add_adapter(shared[key], src.final, adapter)
        shared[key].eval()
        slots.append(Slot(src.name, shared[key], load_tokenizer(src.final), adapter=adapter, source=str(src.run_dir)))
    if base:
        folder = local_folder(base).resolve()
        model = shared.get(folder) or load_model(str(folder), dtype=dtype)[0]
        slots.append(Slot(base_name, model, load_tokenizer(folder), adapter=None, source=str(folder)))
    return slots


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ServeError(f"'{name}' is named twice", "serve each run once")
        seen.add(name)


# ------------------------------------------------------------------ the worker


@dataclass
class Job:
    """A queued generation; `cancel()` stops it before or during generation."""

    request: GenerationRequest
    sink: Callable[[Event], None]
    id: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Busy(ServeError):
    """The worker's queue is full: the client should retry later (HTTP 503 with Retry-After)."""


class Worker:
    """One thread runs every generation in arrival order, so concurrent clients queue instead of colliding.

    At most `max_queue` jobs wait (0 = no limit); `submit` raises Busy past that, so a flood of
    clients gets a fast refusal instead of an ever longer wait.
    """

    def __init__(self, engine: Engine, max_queue: int = 0):
        self.engine = engine
        self.max_queue = max_queue
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self.running: Job | None = None
        self._thread = threading.Thread(target=self._run, name="tunesmith-generate", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, sink: Callable[[Event], None]) -> Job:
        if self.max_queue and self._jobs.qsize() >= self.max_queue:
            raise Busy(f"{self._jobs.qsize()} requests are waiting (serve.max_queue)", "retry in a few seconds")
        job = Job(request, sink, next(self._ids))
        self._jobs.put(job)
        return job

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def close(self, timeout: float = 10.0) -> None:
        if self.running is not None:
            self.running.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            self.running = job
            try:
                for event in self.engine.stream(job.request, job.cancelled.is_set):
                    job.sink(event)
            except Exception as e:  # a failed generation answers its own client; the worker goes on
                job.sink(Event(error=f"generation failed: {type(e).__name__}: {e}", finish_reason="error"))
            finally:
                self.running = None
