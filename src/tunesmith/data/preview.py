"""What the model will learn: a rendered example cut into runs of trained and untrained text."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.formats import Reader
from tunesmith.data.render import render_example


@dataclass
class Preview:
    """One example as the model sees it: (text, trained) runs, and token counts."""

    line: int
    runs: list[tuple[str, bool]]
    tokens: int
    trained: int
    truncated: int
    side: str = ""  # of a preference pair: "chosen" or "rejected"


def preview_example(example: dict, tokenizer, *, max_length: int | None = None) -> Preview:
    """Render through the one renderer and decode each run of equally-masked tokens."""
    r = render_example(example, tokenizer, max_length=max_length)
    runs: list[tuple[str, bool]] = []
    start = 0
    for i in range(1, len(r.input_ids) + 1):
        if i == len(r.input_ids) or r.loss_mask[i] != r.loss_mask[start]:
            text = tokenizer.decode(r.input_ids[start:i], skip_special_tokens=False)
            runs.append((text, bool(r.loss_mask[start])))
            start = i
    return Preview(example.get("line", 0), runs, len(r.input_ids), r.n_trained, r.truncated, example.get("side", ""))


def preview_file(path: str | Path, tokenizer, *, n: int = 3, max_length: int | None = None, format: str | None = None,
                 mapping: Any = None, system: str | None = None) -> list[Preview]:
    """The first `n` usable examples of a file, rendered; a preference pair as its two sequences."""
    out: list[Preview] = []
    for row in Reader(path, format=format, mapping=mapping, system=system):
        if row.example is not None:
            out += [preview_example(example, tokenizer, max_length=max_length) for example in _sequences(row.example)]
            if len(out) >= n:
                break
    return out


def _sequences(example: dict) -> list[dict]:
    """The example itself, or a pair's prompt + chosen and prompt + rejected (as the pair is trained)."""
    from tunesmith.data.render import pair_conversations

    if "chosen" not in example:
        return [example]
    return [{"messages": c, "line": example["line"], "side": side}
            for side, c in zip(("chosen", "rejected"), pair_conversations(example))]
