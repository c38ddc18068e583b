"""Token statistics through the one renderer: lengths, trainable tokens, what truncation would cut."""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.data.render import render_example


@dataclass
class RowTokens:
    """Token counts for one rendered example (before truncation, except `kept_trained`)."""

    total: int
    trained: int
    truncated: int  # tokens cut off by max_length
    kept_trained: int  # trained tokens that survive truncation
    answer: int  # trained tokens of the last trained turn, end-of-turn included


def measure(example: dict, tokenizer, max_length: int | None) -> RowTokens:
    """Counts of one example; a preference pair's are both its sequences' together (a preference step runs both)."""
    if "chosen" in example:
        return both(*measure_pair(example, tokenizer, max_length))
    full = render_example(example, tokenizer)
    mask = full.loss_mask
    limit = len(mask) if max_length is None else min(max_length, len(mask))
    return RowTokens(len(mask), sum(mask), len(mask) - limit, sum(mask[:limit]), _last_run(mask))


def measure_pair(example: dict, tokenizer, max_length: int | None) -> tuple[RowTokens, RowTokens]:
    """Counts of a preference pair's two sequences: the prompt plus the chosen, and plus the rejected answer."""
    from tunesmith.data.render import pair_conversations

    return tuple(measure({"messages": c}, tokenizer, max_length) for c in pair_conversations(example))


def both(a: RowTokens, b: RowTokens) -> RowTokens:
    """Two sequences counted as one row: totals added, `answer` the longer one's."""
    return RowTokens(a.total + b.total, a.trained + b.trained, a.truncated + b.truncated,
                     a.kept_trained + b.kept_trained, max(a.answer, b.answer))


def _last_run(mask: list[int]) -> int:
    """Length of the last run of trained tokens (the final answer)."""
    n = 0
    for m in reversed(mask):
        if m:
            n += 1
        elif n:
            break
    return n


def summarise(rows: list[RowTokens], max_length: int | None) -> dict:
    """min / median / p95 / max of the lengths, totals, and what truncation cuts."""
    if not rows:
        return {"rows": 0}
    lengths = sorted(r.total for r in rows)
    return {
        "rows": len(rows),
        "min": lengths[0],
        "median": _pct(lengths, 50),
        "p95": _pct(lengths, 95),
        "max": lengths[-1],
        "total_tokens": sum(min(r.total, max_length or r.total) for r in rows),
        "trainable_tokens": sum(r.kept_trained for r in rows),
        "max_length": max_length,
        "rows_truncated": sum(1 for r in rows if r.truncated),
        "tokens_cut": sum(r.truncated for r in rows),
        "trained_tokens_cut": sum(r.trained - r.kept_trained for r in rows),
        "histogram": histogram(lengths),
    }


HISTOGRAM_BINS = 20


def histogram(sorted_lengths: list[int], bins: int = HISTOGRAM_BINS) -> dict:
    """Rows per token-length bin: `edges` (one more than `counts`; bin i holds edges[i] <= n < edges[i + 1])
    and `counts`, at most `bins` bins of whole tokens covering the shortest to the longest row."""
    low, high = sorted_lengths[0], sorted_lengths[-1]
    width = max(1, -(-(high - low + 1) // bins))
    used = (high - low) // width + 1
    counts = [0] * used
    for n in sorted_lengths:
        counts[(n - low) // width] += 1
    return {"edges": [low + i * width for i in range(used + 1)], "counts": counts}


def _pct(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile."""
    index = max(0, min(len(sorted_values) - 1, -(-len(sorted_values) * q // 100) - 1))
    return sorted_values[int(index)]
