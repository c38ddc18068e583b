"""Text generation for one conversation, streamed token by token, prompted through the one renderer."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from tunesmith.data.render import render_prompt, stop_token_ids


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


def _generate_kwargs(tokenizer, params: SamplingParams) -> dict:
    kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=stop_token_ids(tokenizer),
                  pad_token_id=tokenizer.pad_token_id)
    if params.temperature and params.temperature > 0:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_chat(model, tokenizer, messages: Sequence[dict], params: SamplingParams = SamplingParams()) -> Iterator[str]:
    """Yield the answer's text piece by piece as the model produces it."""
    import torch
    from transformers import TextIteratorStreamer

    if params.seed is not None:
        torch.manual_seed(params.seed)
    ids = torch.tensor([render_prompt(messages, tokenizer)], device=model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                  **_generate_kwargs(tokenizer, params))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as e:  # surfaced in the caller's thread below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def generate(model, tokenizer, messages: Sequence[dict], params: SamplingParams = SamplingParams()) -> str:
    """The whole answer as one string (`tunesmith.generate` in the Python API)."""
    return "".join(stream_chat(model, tokenizer, messages, params)).strip()
