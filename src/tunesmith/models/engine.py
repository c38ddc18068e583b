"""THE generation engine: KV-cached, batched decoding with requests joining and leaving at token boundaries.

One `Engine` drives one model object. Requests are submitted with their own sampling (seed,
temperature, top_p, stop strings, max tokens) and, on a peft model, their own adapter; each
`step()` admits waiting requests (a prefill each, merged into the running batch), then runs ONE
forward pass for every active sequence and hands each its next token. A request leaves the batch
the step it finishes or is cancelled, so concurrent clients share forward passes (continuous
batching) and a departed client costs nothing after the next token.

The running batch is left-padded: row b's cache holds `pad[b]` empty slots then its tokens, the
2D attention mask hides the pads and position ids count real tokens only, so a row's logits are
its unpadded ones (to float rounding). Two things leave hidden slots inside a row too: prompts
that join together sharing a long prefix (a system prompt and few-shot turns) run it once, so a
row is [prefix][pads][its own tokens]; and a reference scored in the prefill (compare's response
loss, `Handle.score_ids`) stays in the cache, masked. Rows of different adapters share a pass
through peft's `adapter_names` (mixed-adapter batches; "__base__" = adapters off).

Why not transformers' own continuous batching (`generate_batch`, transformers 5.24): measured on
the 2-core CPU with SmolLM2-135M, 8 prompts x 32 tokens gave 21.6 tokens/s against 11.8 for one
plain `generate` at a time (1.8x), while one padded forward of 8 rows costs about 1.1x one row's
(4.6x the tokens); it is built around paged attention and CUDA graphs, and has no per-request
seed, stop strings or adapters. See bench/serve_throughput.py.

Caches are grown and trimmed in place for full-attention layers (`DynamicLayer`, each given GROW_BY
spare columns so a step writes its token instead of copying the whole cache); a model whose
cache has other layer kinds (sliding windows, linear attention) decodes its requests one at a
time through the same code, which is correct and unbatched.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

GREEDY_BELOW = 1e-5  # temperatures under this are greedy: dividing by them overflows to inf/NaN
NUCLEUS_FIRST = 256  # candidates looked at before sorting the whole vocabulary
SHARED_PREFIX = 32  # tokens the prompts joining together must share before their common prefix runs once
SCORE_LOGITS = 64 << 20  # logits one prefill of scored requests may hold (rows x kept positions x vocabulary): 256 MB
GROW_BY = 64  # cache columns a layer reserves ahead, so a decode step writes its token in place
BASE = "__base__"  # the adapter name that switches a peft model's adapters off for one row (peft's own)


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded. temperature < GREEDY_BELOW is greedy; stop strings end the text before them."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Event:
    """A piece of an answer. The last one has `finish_reason` ('stop' | 'length' | 'error') and the counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    token_ids: tuple[int, ...] = ()  # on the last event: every generated id (the stop token included)
    score: tuple[float, int] | None = None  # on the last event of a scored request: (summed NLL, tokens)


def failure(e: Exception) -> Event:
    """The last Event of a request its engine could not run (`e` says why), as its client receives it."""
    return Event(error=f"generation failed: {type(e).__name__}: {e}", finish_reason="error")


def whole(texts: Sequence[str], last: Event) -> Event:
    """One answer's Events as one: the pieces' text joined, the last event's reason and counts."""
    return Event("".join(texts), last.finish_reason, last.prompt_tokens, last.completion_tokens, last.error,
                 last.token_ids, last.score)


@dataclass
class Handle:
    """A submitted request; `cancel()` removes it from the batch at the next step (no final event then).

    `adapter`: on a peft model, the adapter this request runs with (BASE for none, None for the active one).
    `score_ids`: tokens to score after the prompt (teacher-forced in the prefill's own pass, then hidden
    from the answer): the last event's `score` is their summed negative log-likelihood and count.
    """

    id: int
    prompt_ids: list[int]
    sampling: Sampling
    sink: Callable[[Event], None]
    adapter: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    score_ids: tuple[int, ...] = ()

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass(eq=False)  # rows are compared by identity
class _Row:
    """An active sequence: its request, sampler, text assembler and what it generated so far."""

    handle: Handle
    generator: Any
    text: "TextAssembler"
    stop_ids: frozenset[int]
    generated: list[int] = field(default_factory=list)
    length: int = 0  # real tokens in the cache (prompt + generated, the last one not yet fed)
    next_token: int | None = None  # sampled, to be fed in the next pass
    score: tuple[float, int] | None = None  # the score_ids' (summed NLL, count), from the prefill


class Engine:
    """Continuous batching over one model (a plain model or a peft model holding several adapters).

    `submit`, `cancel` and `step` are thread-safe: steps run one at a time (a worker thread and a
    caller stepping for its own answer can share an engine).
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 16, scorer: Callable | None = None):
        """`scorer(logits (n, V), targets (n,)) -> summed NLL`: what scores score_ids (the caller's loss, e.g.
        train.loss.cross_entropy_sum; this layer does not import it)."""
        from tunesmith.data.render import stop_token_ids

        self.model, self.tokenizer, self.max_batch, self.scorer = model, tokenizer, max_batch, scorer
        self.stop_ids = frozenset(stop_token_ids(tokenizer))
        self._waiting: deque[Handle] = deque()
        self._lock = threading.Lock()  # guards the waiting queue
        self._stepping = threading.Lock()  # one step at a time
        self._ids = itertools.count(1)
        self._rows: list[_Row] = []
        self._cache = None
        self._mask = None  # (B, T) long: 1 = real token, 0 = left pad
        self.passes = 0  # forward passes run (decode steps), for benchmarks and tests
        self.batchable = _batchable(model)  # full attention only: other cache kinds run one request at a time

    # ---------------------------------------------------------------- the public interface

    def submit(self, prompt_ids: Sequence[int], sampling: Sampling, sink: Callable[[Event], None],
               adapter: str | None = None, score_ids: Sequence[int] = ()) -> Handle:
        """Queue a request; `sink` receives its Events from the stepping thread. `score_ids` (see Handle) need
        `can_score`."""
        if not prompt_ids:
            raise ValueError("an empty prompt has nothing to continue")
        if score_ids and not self.can_score:
            raise ValueError("this engine cannot score tokens in its prefill (see Engine.can_score)")
        handle = Handle(next(self._ids), list(prompt_ids), sampling, sink, adapter, score_ids=tuple(score_ids))
        with self._lock:
            self._waiting.append(handle)
        return handle

    @property
    def busy(self) -> bool:
        return bool(self._rows or self._waiting)

    @property
    def context_length(self) -> int:
        """Tokens a request may hold (prompt + answer): what the model was trained for."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def can_score(self) -> bool:
        """Whether requests may carry score_ids: with a scorer, and a full-attention cache (the scored tokens stay
        in it, hidden by the mask; a sliding window would count them against its width)."""
        return self.scorer is not None and self.batchable and type(self)._prefill is Engine._prefill

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def step(self) -> None:
        """Drop cancelled rows, admit waiting requests, then one forward pass for every active row."""
        with self._stepping:
            self._drop([r for r in self._rows if r.handle.cancelled.is_set()])
            self._admit()
            if self._rows:
                self._decode()

    def stream(self, prompt_ids: Sequence[int], sampling: Sampling, adapter: str | None = None):
        """One answer's Events as they come, stepping the engine in this thread (other requests share the steps)."""
        events: list[Event] = []
        self.submit(prompt_ids, sampling, events.append, adapter)
        while True:
            while events:
                event = events.pop(0)
                yield event
                if event.finish_reason:
                    return
            self.step()

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling | Sequence[Sampling],
                 adapters: Sequence[str | None] | None = None,
                 on_done: Callable[[int], None] | None = None,
                 scores: Sequence[Sequence[int]] | None = None) -> list[Event]:
        """Every prompt's whole answer (the last Event, text joined), in input order; runs in this thread.
        `scores`: per prompt, the score_ids to score in its prefill (see Handle)."""
        samplings = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
        results: list[Event | None] = [None] * len(prompts)
        parts: list[list[str]] = [[] for _ in prompts]

        def sink_for(i: int):
            def sink(event: Event) -> None:
                parts[i].append(event.text)
                if event.finish_reason:
                    results[i] = whole(parts[i], event)
                    if on_done:
                        on_done(i)
            return sink

        # longest first: the batch's padding is set by its longest prompt, so similar lengths share it
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        for i in order:
            self.submit(prompts[i], samplings[i], sink_for(i), adapters[i] if adapters else None,
                        scores[i] if scores else ())
        while self.busy:
            self.step()
        return results  # type: ignore[return-value]

    def fail(self, message: str) -> None:
        """End every active and waiting request with an error event (a forward pass raised); the engine stays usable."""
        with self._stepping, self._lock:  # no step runs while the batch is reset
            waiting, self._waiting = list(self._waiting), deque()
            rows, self._rows, self._cache, self._mask = self._rows, [], None, None
        for handle in [r.handle for r in rows] + waiting:
            if not handle.cancelled.is_set():
                handle.sink(Event(error=message, finish_reason="error"))

    # ---------------------------------------------------------------- admitting requests

    def _admit(self) -> None:
        """Prefill every waiting request there is room for, in one padded pass, and merge them into the batch."""
        room = self.max_batch - len(self._rows) if self.batchable else (0 if self._rows else 1)
        with self._lock:
            joining = []
            while self._waiting and len(joining) < room:
                handle = self._waiting.popleft()
                if not handle.cancelled.is_set():
                    joining.append(handle)
        if not joining:
            return
        try:
            self._prefill(joining)
        except Exception as e:  # requests that cannot run answer their own clients; the running batch goes on
            for handle in joining:
                handle.sink(failure(e))

    def _prefill(self, handles: list[Handle]) -> None:
        """Run the prompts together (left-padded), sample each first token, and merge their cache into the batch's.

        A request with score_ids feeds them after its prompt in the same pass (teacher-forced, so one
        forward gives the answer's first token and the reference's loss); their columns are then
        masked out, so the answer attends to the prompt alone and continues at the prompt's positions.
        """
        import torch

        keep = 1 + max(len(h.score_ids) for h in handles)  # logits kept per row: the scored span and the next token
        if len(handles) > 1 and len(handles) * keep * _vocab(self.model) > SCORE_LOGITS:
            half = len(handles) // 2  # (rows, keep, V) logits past the budget: two passes
            self._prefill(handles[:half])
            self._prefill(handles[half:])
            return
        device = self.model.device
        shared, cache = self._shared_prefix(handles)
        cache = cache if cache is not None else self._new_cache()
        fed = [h.prompt_ids[shared:] + list(h.score_ids) for h in handles]
        width = max(map(len, fed))
        ids = torch.full((len(handles), width), self._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(handles), width), dtype=torch.long, device=device)
        for b, tokens in enumerate(fed):
            ids[b, width - len(tokens):] = torch.tensor(tokens, device=device)
            mask[b, width - len(tokens):] = 1
        positions = shared + (mask.cumsum(dim=1) - 1).clamp(min=0)  # each row goes on after the prefix (or from 0)
        mask = torch.cat([mask.new_ones((len(handles), shared)), mask], dim=1)  # [prefix][pads][the row's own]
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                             logits_to_keep=keep, **self._adapter_kwargs(handles))
        rows = [_Row(h, _generator(device, h.sampling.seed), TextAssembler(self.tokenizer, h.sampling.stop),
                     self.stop_ids, length=len(h.prompt_ids)) for h in handles]
        for b, row in enumerate(rows):
            n = len(row.handle.score_ids)
            if n:
                mask[b, -n:] = 0  # the scored tokens: in the cache, invisible to the answer
                with torch.inference_mode():
                    nll = self.scorer(out.logits[b, keep - 1 - n:keep - 1],
                                      torch.tensor(row.handle.score_ids, device=device))
                row.score = (float(nll), n)
        self._merge(out.cache, mask)
        self._rows += rows
        for b, row in enumerate(rows):
            self._take(row, out.logits[b, keep - 1 - len(row.handle.score_ids)])

    def _shared_prefix(self, handles: list[Handle]):
        """(P, cache) when the joining prompts share their first P >= SHARED_PREFIX tokens (a system prompt and
        few-shot turns): those run once, their cache copied to every row; else (0, None). Each row keeps at
        least one token of its own, whose logits give its first token."""
        import os

        import torch

        if len(handles) < 2 or len({h.adapter for h in handles}) > 1:
            return 0, None
        shared = min(len(os.path.commonprefix([h.prompt_ids for h in handles])), *(len(h.prompt_ids) - 1 for h in handles))
        if shared < SHARED_PREFIX:
            return 0, None
        ids = torch.tensor([handles[0].prompt_ids[:shared]], device=self.model.device)
        with torch.inference_mode():
            cache = self.model(input_ids=ids, cache=self._new_cache(), use_cache=True, logits_to_keep=1,
                               **self._adapter_kwargs(handles[:1])).cache
        for layer in cache.layers:
            layer.keys = layer.keys.expand(len(handles), -1, -1, -1).contiguous()
            layer.values = layer.values.expand(len(handles), -1, -1, -1).contiguous()
        return shared, cache

    def _new_cache(self):
        """An empty cache for a prefill: growing full-attention layers where the batch is merged in place, else
        None (the model makes its own)."""
        if not self.batchable:
            return None
        from transformers.cache_utils import DynamicCache

        from tunesmith.models.kv_cache import GrowingLayer

        cache = DynamicCache(config=self.model.config)
        cache.layers = [GrowingLayer(grow_by=GROW_BY) for _ in cache.layers]
        return cache

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else next(iter(self.stop_ids), 0)

    def _merge(self, cache, mask) -> None:
        """Append a cache of new rows (their (k, L) mask) to the batch's, left-padding whichever is shorter."""
        import torch

        if self._cache is None or not self._rows:
            self._cache, self._mask = cache, mask
            return
        width, length = self._mask.shape[1], mask.shape[1]
        if length < width:
            _pad_left(cache, width - length)
            mask = torch.cat([mask.new_zeros((mask.shape[0], width - length)), mask], dim=1)
        elif length > width:
            _pad_left(self._cache, length - width)
            self._mask = torch.cat([self._mask.new_zeros((self._mask.shape[0], length - width)), self._mask], dim=1)
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self._mask = torch.cat([self._mask, mask], dim=0)

    # ---------------------------------------------------------------- one decode step

    def _decode(self) -> None:
        """Feed every row its sampled token in one pass; each row takes its next one."""
        import torch

        device = self.model.device
        rows = self._rows
        feed = torch.tensor([[r.next_token] for r in rows], device=device)  # (B, 1)
        positions = torch.tensor([[r.length] for r in rows], device=device)  # (B, 1): real tokens before it
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long, device=device)], dim=1)
        with torch.inference_mode():
            out = self.model(input_ids=feed, attention_mask=self._mask, position_ids=positions,
                             cache=self._cache, use_cache=True, logits_to_keep=1,
                             **self._adapter_kwargs([r.handle for r in rows]))
        self.passes += 1
        for r in rows:
            r.length += 1
        logits = out.logits[:, -1]  # (B, V)
        greedy = logits.argmax(dim=-1).tolist()
        for b, r in enumerate(list(rows)):
            self._take(r, logits[b], greedy[b])

    def _take(self, row: _Row, logits, greedy: int | None = None) -> None:
        """Record the row's next token; finish the row on a stop token, a stop string or its token budget."""
        s = row.handle.sampling
        token = greedy if greedy is not None and s.temperature < GREEDY_BELOW else pick(logits, s.temperature, s.top_p,
                                                                                        row.generator)
        row.generated.append(token)
        if token in row.stop_ids:
            return self._finish(row, "stop")
        piece, hit = row.text.push(token)
        if piece:
            row.handle.sink(Event(piece))
        if hit:
            return self._finish(row, "stop")
        if len(row.generated) >= s.max_tokens:
            return self._finish(row, "length")
        row.next_token = token

    def _finish(self, row: _Row, reason: str) -> None:
        self._drop([row])
        if not row.handle.cancelled.is_set():
            row.handle.sink(Event(row.text.flush(), reason, len(row.handle.prompt_ids), len(row.generated),
                                  token_ids=tuple(row.generated), score=row.score))

    def _drop(self, leaving: list[_Row]) -> None:
        """Take rows out of the batch (and their cache rows), then trim pad columns no row needs."""
        if not leaving:
            return
        import torch

        keep = [i for i, r in enumerate(self._rows) if r not in leaving]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, device=self.model.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        unused = int((self._mask.cumsum(dim=1) == 0).sum(dim=1).min())  # leading pads every row has
        if unused:
            self._mask = self._mask[:, unused:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def _adapter_kwargs(self, handles: Sequence[Handle]) -> dict:
        """peft's mixed-adapter batches: one adapter name per row (BASE = adapters off, None = the active one)."""
        if not hasattr(self.model, "peft_config") or all(h.adapter is None for h in handles):
            return {}
        active = self.model.active_adapter
        return {"adapter_names": [h.adapter or active for h in handles]}


@dataclass(frozen=True)
class Generation:
    """One finished answer: its text (stripped), the ids generated (the stop token included), whether it stopped,
    and, when asked, the (summed NLL, count) of the tokens scored after its prompt."""

    text: str
    token_ids: tuple[int, ...]
    stopped: bool
    score: tuple[float, int] | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def answer(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = 128,
           batch_size: int = 8, on_batch: Callable[[int], None] | None = None,
           scored: Sequence[Sequence[dict]] | None = None, scorer: Callable | None = None) -> list[Generation]:
    """Greedy answers to each conversation, prompted through the chat template (with the assistant header).

    `scored`: per conversation, the same conversation with a reference answer as its only trained turn;
    each answer's `score` is then that reference's loss by `scorer` (see Engine), computed in the prefill's
    own pass, or None where the engine cannot (`Engine.can_score`) or the template does not render the
    prompt as a prefix of the scored conversation (the caller scores those on their own)."""
    from tunesmith.data.render import render, render_prompt, trained_continuation

    prompts = [render_prompt(c, tokenizer) for c in conversations]
    engine = Engine(model, tokenizer, max_batch=batch_size, scorer=scorer)
    scores = None
    if scored is not None and engine.can_score:
        scores = [trained_continuation(p, render(c, tokenizer)) for p, c in zip(prompts, scored)]
    return generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        on_batch=on_batch, scores=scores, engine=engine)


def generate_ids(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 128,
                 batch_size: int = 8, on_batch: Callable[[int], None] | None = None,
                 scores: Sequence[Sequence[int] | None] | None = None, engine: Engine | None = None) -> list[Generation]:
    """Greedy continuations of token-id prompts, up to `batch_size` decoded together; `on_batch(1)` per answer.
    `scores`: per prompt, tokens to score after it (see Handle.score_ids; None or empty: none)."""
    engine = engine or Engine(model, tokenizer, max_batch=batch_size)
    events = engine.generate(prompts, Sampling(max_tokens=max_new_tokens),
                             on_done=(lambda i: on_batch(1)) if on_batch else None,
                             scores=[s or () for s in scores] if scores else None)
    return [Generation(e.text.strip(), e.token_ids, e.finish_reason == "stop", e.score) for e in events]


def _generator(device, seed: int | None):
    import torch

    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return gen


def _vocab(model) -> int:
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(getattr(config, "vocab_size", 0) or 0)


def _batchable(model) -> bool:
    """Whether the model's KV cache is all full-attention layers (rows can then be padded and merged in place)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # a config the cache cannot read: play safe
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _pad_left(cache, n: int) -> None:
    """n empty (zero) slots before every row's tokens, in every layer; the mask hides them."""
    import torch

    for layer in cache.layers:
        b, h, _, d = layer.keys.shape
        zeros = layer.keys.new_zeros((b, h, n, d))
        layer.keys = torch.cat([zeros, layer.keys], dim=2)
        layer.values = torch.cat([layer.values.new_zeros((b, h, n, layer.values.shape[-1])), layer.values], dim=2)


def pick(logits, temperature: float, top_p: float, gen) -> int:
    """Greedy below GREEDY_BELOW; otherwise sample from the top-p nucleus of softmax(logits / temperature)."""
    import torch

    if temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        # the nucleus is nearly always within the top few hundred: a top-k is ~20x cheaper than sorting a
        # whole vocabulary (3 ms at 49k, 21 ms at Gemma's 262k on one core); sort it all only when it is not
        sorted_probs, order = probs.topk(min(NUCLEUS_FIRST, len(probs)))
        if float(sorted_probs.sum()) < top_p:
            sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


class TextAssembler:
    """Token ids -> text pieces, incrementally: never splits a UTF-8 character, never shows text past a stop string.

    Each token decodes only a short window (from the last safe boundary), so the cost per token is
    constant, not proportional to the answer so far.
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.text = ""  # decoded so far (stable part)
        self.sent = 0
        self._prefix = 0  # ids[_prefix:_read] decode to the end of `text`; decoding from a boundary keeps spaces right
        self._read = 0

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return (new text safe to show, whether a stop string was reached)."""
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix:self._read])
        after = self._decode(self.ids[self._prefix:])
        if after.endswith("\ufffd") or len(after) <= len(before):  # half a character, or nothing yet
            return "", False
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        cut = min((i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            return self._take(len(self.text)), True
        return self._take(len(self.text) - self._held_back()), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def _held_back(self) -> int:
        """Length of the longest tail that could still grow into a stop string."""
        return max((n for s in self.stops for n in range(min(len(s) - 1, len(self.text)), 0, -1)
                    if self.text.endswith(s[:n])), default=0)

    def _take(self, upto: int) -> str:
        piece = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece
