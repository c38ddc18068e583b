"""One conversation's answer, streamed or whole: the chat template (the one renderer), then the one engine."""

from __future__ import annotations

from typing import Iterator, Sequence

from tunesmith.data.render import render_prompt
from tunesmith.models.engine import Engine, Sampling


def stream_chat(model, tokenizer, messages: Sequence[dict], sampling: Sampling = Sampling(max_tokens=256)) -> Iterator[str]:
    """Yield the answer's text piece by piece as the model produces it."""
    engine = Engine(model, tokenizer, max_batch=1)
    for event in engine.stream(render_prompt(messages, tokenizer), sampling):
        if event.error:
            raise RuntimeError(event.error)
        if event.text:
            yield event.text


def generate(model, tokenizer, messages: Sequence[dict], sampling: Sampling = Sampling(max_tokens=256)) -> str:
    """The whole answer as one string (`tunesmith.generate` in the Python API)."""
    return "".join(stream_chat(model, tokenizer, messages, sampling)).strip()
