"""Batched greedy generation for evaluation: left padding, a max-new-tokens limit, stop at end-of-turn.

Prompts are sorted by length so each batch pads little, then answers are put back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from tunesmith.data.render import render_prompt, stop_token_ids


@dataclass(frozen=True)
class Generation:
    """One answer: its text, the ids generated (incl. the stop token), and whether it stopped by itself."""

    text: str
    token_ids: tuple[int, ...]
    stopped: bool

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def answer(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = 128,
           batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> list[Generation]:
    """Greedy answers to each conversation, prompted through the chat template (with the assistant header)."""
    prompts = [render_prompt(c, tokenizer) for c in conversations]
    return generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        on_batch=on_batch)


def generate_ids(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 128,
                 batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> list[Generation]:
    """Greedy continuations of token-id prompts, `batch_size` at a time."""
    out: list[Generation | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    stops = set(stop_token_ids(tokenizer))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        new_tokens = _generate_batch(model, tokenizer, [prompts[i] for i in idx], max_new_tokens, sorted(stops))
        for i, tokens in zip(idx, new_tokens):
            out[i] = _finish(tokenizer, tokens, stops)
        if on_batch:
            on_batch(len(idx))
    return out  # type: ignore[return-value]


def _generate_batch(model, tokenizer, prompts: list[Sequence[int]], max_new_tokens: int, stops: list[int]) -> list[list[int]]:
    """Left-pad the prompts (so every row's next token comes at the same position) and decode greedily."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):] = 1
    with torch.inference_mode():
        output = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
            eos_token_id=stops, pad_token_id=pad,
        )
    return [row[width:].tolist() for row in output.cpu()]


def _finish(tokenizer, tokens: list[int], stops: set[int]) -> Generation:
    """Cut at the first stop token (rows that finished early are padded after it)."""
    for n, tok in enumerate(tokens):
        if tok in stops:
            return Generation(tokenizer.decode(tokens[:n], skip_special_tokens=True).strip(), tuple(tokens[:n + 1]), True)
    return Generation(tokenizer.decode(tokens, skip_special_tokens=True).strip(), tuple(tokens), False)
