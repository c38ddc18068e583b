"""The one renderer: a conversation -> token ids and a loss mask, through the model's chat template.

Training, evaluation and serving all call this module, so a model is always prompted the way it
was trained. By default the loss is on assistant turns only (every one of them, unless a message
carries `weight: 0`) and includes the end-of-turn token, so the model learns to stop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

# For base models without a chat template. Documented in docs/data-formats.md.
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

Message = dict[str, Any]
# Tokens that end a turn in the chat templates tunesmith knows (Qwen/ChatML, Llama 3, Gemma, Phi-3).
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


@dataclass
class Rendered:
    """Token ids and, per token, 1 where the loss is taken. `truncated` counts tokens cut off the end."""

    input_ids: list[int]
    loss_mask: list[int]
    truncated: int = 0

    @property
    def labels(self) -> list[int]:
        """input_ids with untrained positions set to -100 (the model shifts them itself)."""
        return [t if m else -100 for t, m in zip(self.input_ids, self.loss_mask)]

    @property
    def n_trained(self) -> int:
        return sum(self.loss_mask)


def ensure_chat_template(tokenizer) -> str:
    """Give a tokenizer without a chat template the documented plain one; return the template."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_TEMPLATE
    return tokenizer.chat_template


def template_hash(tokenizer) -> str:
    """A short fingerprint of the chat template, stored in run manifests and exports."""
    return hashlib.sha256(ensure_chat_template(tokenizer).encode("utf-8")).hexdigest()[:16]


def render_example(example: dict, tokenizer, *, max_length: int | None = None) -> Rendered:
    """A canonical example ({'messages': [...]} or {'text': ...}) -> ids and loss mask."""
    if "text" in example and "messages" not in example:
        return render_text(example["text"], tokenizer, max_length=max_length)
    return render(example["messages"], tokenizer, max_length=max_length)


def render(
    messages: Sequence[Message],
    tokenizer,
    *,
    max_length: int | None = None,
    train_on: Literal["assistant", "all"] = "assistant",
) -> Rendered:
    """Render a conversation through the chat template; train on assistant turns (with end-of-turn)."""
    ensure_chat_template(tokenizer)
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = _apply(tokenizer, msgs, add_generation_prompt=False)
    spans = [(0, len(text))] if train_on == "all" else _assistant_spans(tokenizer, messages, msgs, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    return _truncate(ids, _mask_from_spans(enc["offset_mapping"], spans), max_length)


def render_text(text: str, tokenizer, *, max_length: int | None = None) -> Rendered:
    """Plain text (continued pre-training): every token is trained, then end-of-sequence."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return _truncate(list(ids), [1] * len(ids), max_length)


def each_example(examples: Sequence[dict], fn: Callable[[dict], Any]) -> list[Any]:
    """fn(example) for every example; one DataError naming every example the chat template refuses.

    Examples are named by their `source_line` (set when a file is read) or their position.
    """
    from tunesmith.errors import DataError

    out, refused = [], []
    for i, ex in enumerate(examples, 1):
        try:
            out.append(fn(ex))
        except DataError as e:
            refused.append((str(ex.get("source_line", i)), e))
    if refused:
        from tunesmith.io import some_names

        first = refused[0][1]
        raise DataError(f"{first.message} (lines {some_names([n for n, _ in refused])}: {len(refused)} of "
                        f"{len(examples)} examples)", first.hint)
    return out


def render_prompt(messages: Sequence[Message], tokenizer) -> list[int]:
    """The ids a model sees before it answers: the conversation plus the assistant header."""
    ensure_chat_template(tokenizer)
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = _apply(tokenizer, msgs, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_batch(rendered: Sequence[Rendered], pad_id: int) -> dict:
    """Right-padded to the longest: input_ids, labels (-100 on padding), attention_mask, each (B, T)."""
    import torch

    shape = (len(rendered), max(len(r.input_ids) for r in rendered))
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, -100, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    for b, r in enumerate(rendered):
        n = len(r.input_ids)
        input_ids[b, :n] = torch.tensor(r.input_ids)
        labels[b, :n] = torch.tensor(r.labels)
        attention[b, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn (eos, and the template's end-of-turn marker if different)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for marker in (*TURN_ENDS, "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(marker) if marker in tokenizer.get_vocab() else None
        if tid is not None and marker in (tokenizer.chat_template or ""):
            ids.add(tid)
    return sorted(ids)


# ------------------------------------------------------------------ internals


def _apply(tokenizer, msgs: list[Message], *, add_generation_prompt: bool) -> str:
    import jinja2

    from tunesmith.errors import DataError

    try:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as e:  # a template's raise_exception(), e.g. Gemma 2 on a system turn
        raise DataError(f"the model's chat template refuses this conversation: {e}",
                        "some templates (Gemma 2, Mistral) take no system turn and need user/assistant turns "
                        "to alternate; fold the system text into the first user turn") from None


def _assistant_spans(tokenizer, messages: Sequence[Message], msgs: list[Message], text: str) -> list[tuple[int, int]]:
    """Character spans of each trained assistant turn in `text`, from its content to its end-of-turn marker.

    Uses the template's prefix property (rendering the first i messages gives a prefix of the
    whole); templates without it (some rewrite earlier turns) fall back to finding each answer
    in order.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _apply(tokenizer, msgs[:i], add_generation_prompt=True) if i else ""
        upto = _apply(tokenizer, msgs[: i + 1], add_generation_prompt=False)
        if text.startswith(upto) and upto.startswith(before) and len(upto) > len(before):
            start, end = len(before), len(upto)
        else:
            start = text.find(m["content"].strip(), cursor)
            if start < 0:
                continue
            end = _end_of_turn(tokenizer, text, start + len(m["content"].strip()))
        cursor = end
        # Train up to and including the end-of-turn marker, not what the template adds after it: a
        # newline, or Phi-3's eos after the last turn's <|end|> (earlier turns have none).
        end = _first_turn_end(tokenizer, text, start, start + len(text[start:end].rstrip()))
        if m.get("weight", 1) not in (0, 0.0, False):
            spans.append((start, end))
    return spans


def _mask_from_spans(offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for each token whose characters overlap a trained span."""
    return [int(b > a and any(a < end and b > start for start, end in spans)) for a, b in offsets]


def _first_turn_end(tokenizer, text: str, start: int, end: int) -> int:
    """`end`, or the end of the first end-of-turn marker (or eos) in text[start:end] if there is one."""
    found = [i + len(tok) for tok in filter(None, [tokenizer.eos_token, *TURN_ENDS])
             if (i := text.find(tok, start, end)) >= 0]
    return min(found, default=end)


def _end_of_turn(tokenizer, text: str, pos: int) -> int:
    """Extend `pos` over an end-of-turn marker that follows the answer, if any."""
    for tok in filter(None, [tokenizer.eos_token, *TURN_ENDS]):
        if text.startswith(tok, pos):
            return pos + len(tok)
    return pos


def _truncate(ids: list[int], mask: list[int], max_length: int | None) -> Rendered:
    if max_length is None or len(ids) <= max_length:
        return Rendered(ids, mask, 0)
    return Rendered(ids[:max_length], mask[:max_length], len(ids) - max_length)
