"""Word-level differences between two answers, for highlighting them side by side (difflib, server-side)."""

from __future__ import annotations

import difflib
import re

# words, runs of whitespace and single punctuation marks: joining the pieces gives the text back exactly
_PIECES = re.compile(r"\s+|\w+|[^\w\s]")


def pieces(text: str) -> list[str]:
    return _PIECES.findall(text or "")


def word_diff(anchor: str, text: str) -> list[tuple[str, str]]:
    """`text` against `anchor` as (op, piece) segments in reading order: 'same', 'add' (only in `text`)
    and 'del' (only in `anchor`, shown struck through). The 'same' and 'add' pieces join to `text`.

    Whitespace never counts as a difference on its own: it is matched as 'same' wherever it falls.
    """
    a, b = pieces(anchor), pieces(text)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            _push(out, "same", "".join(b[j1:j2]))
            continue
        gone, new = "".join(a[i1:i2]), "".join(b[j1:j2])
        if gone.strip():
            _push(out, "del", gone)
        if new:
            _push(out, "add" if new.strip() else "same", new)
    return out


def _push(out: list[tuple[str, str]], op: str, text: str) -> None:
    """Append, merging with the previous segment of the same op (fewer spans in the page)."""
    if not text:
        return
    if out and out[-1][0] == op:
        out[-1] = (op, out[-1][1] + text)
    else:
        out.append((op, text))
