"""Packing rendered examples into rows of at most max_length tokens, attention kept inside each example.

A packed row holds several examples back to back. Three things keep them apart, because
`position_ids` alone do not confine attention on CPU (DESIGN.md, measured):
- a 4D float mask (B, 1, T, T) of 0 / -inf, block-diagonal and causal;
- `position_ids` that restart at 0 for each example;
- label -100 on the first token of each example, so no loss predicts across a boundary.
Padding at the end of a row forms its own block (never a fully masked row: that gives NaN).

Batches are dicts of tensors: the model inputs (`input_ids`, `attention_mask`, `position_ids`),
`labels`, and `token_mask` (B, T) = 1 on real tokens, for the padding-waste figure. Which
examples make up a step, and the padded (unpacked) path, live in batching.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from tunesmith.data.render import Rendered

if TYPE_CHECKING:
    import torch

IGNORE = -100

# Attention costs ~4*T*d flops per token per layer against ~7M for the linear layers of a
# 135M Llama (d=576), i.e. a row of T tokens adds T/3000 to each token's cost. Used to
# choose between one long row and several shorter ones for a step's examples.
ATTENTION_TOKENS = 3000


@dataclass(frozen=True)
class RowPlan:
    """Example indices per row, and the row length every row is padded to."""

    rows: list[list[int]]
    length: int

    def waste(self, lengths: Sequence[int]) -> float:
        """Fraction of the (rows x length) slots that are padding."""
        used = sum(lengths[i] for row in self.rows for i in row)
        return 1 - used / (len(self.rows) * self.length) if self.rows else 0.0


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of example indices, each summing to at most `capacity` tokens (longest first; ties by index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in order:
        n = min(lengths[i], capacity)  # an over-long example is cut to capacity when collated
        slot = next((r for r, load in enumerate(loads) if load + n <= capacity), None)
        if slot is None:
            rows.append([i])
            loads.append(n)
        else:
            rows[slot].append(i)
            loads[slot] += n
    return rows


def plan_rows(lengths: Sequence[int], max_length: int, *, attention_tokens: int | None = None) -> RowPlan:
    """Pack one step's examples into rows of at most `max_length` tokens, at the lowest compute cost.

    For each row count n, the shortest row length that fits is found by bisection; the cost
    is the padded slots, weighted up by the attention a longer row costs. attention_tokens=0
    means: fewest padded slots only.
    """
    if not lengths:
        return RowPlan([], 0)
    attention_tokens = ATTENTION_TOKENS if attention_tokens is None else attention_tokens
    longest = min(max(lengths), max_length)
    total = sum(min(n, max_length) for n in lengths)
    best: tuple[float, RowPlan] | None = None
    for n_rows in range(1, len(lengths) + 1):
        low = max(longest, math.ceil(total / n_rows))
        if low > max_length:
            continue
        plan = _shortest_fit(lengths, n_rows, low, max_length)
        if plan is None:
            continue
        slots = len(plan.rows) * plan.length
        cost = slots * (1 + plan.length / attention_tokens) if attention_tokens else slots
        if best is None or cost < best[0]:
            best = (cost, plan)
        if low == longest:  # more rows cannot be shorter than the longest example
            break
    assert best is not None, "a row count equal to the number of examples always fits"
    return best[1]


def _shortest_fit(lengths: Sequence[int], n_rows: int, low: int, high: int) -> RowPlan | None:
    """The smallest capacity in [low, high] whose first-fit-decreasing packing uses at most n_rows rows."""
    rows = first_fit_decreasing(lengths, high)
    if len(rows) > n_rows:
        return None
    while low < high:
        mid = (low + high) // 2
        trial = first_fit_decreasing(lengths, mid)
        if len(trial) <= n_rows:
            rows, high = trial, mid
        else:
            low = mid + 1
    rows = first_fit_decreasing(lengths, high)
    length = max(sum(min(lengths[i], high) for i in row) for row in rows)
    return RowPlan(rows, length)


def packed_collate(examples: Sequence[Rendered], *, max_length: int, pad_id: int = 0, dtype=None) -> dict[str, "torch.Tensor"]:
    """A micro-batch's examples -> packed rows (the `collate` seam of `batching.step_batches`)."""
    lengths = [len(e.input_ids) for e in examples]
    plan = plan_rows(lengths, max_length)
    rows = [[examples[i] for i in row] for row in plan.rows]
    return collate_packed(rows, pad_id=pad_id, length=plan.length, dtype=dtype)


def packed_micro_batches(
    examples: Sequence[Rendered], *, max_length: int, pad_id: int = 0, dtype=None
) -> list[dict[str, "torch.Tensor"]]:
    """Like packed_collate, but split into batches of at most ~max_length slots, run one after another.

    Activations grow with the tokens of one forward pass (~2 MB per token for a 135M Llama with
    LoRA in fp32), so a step's rows go through the model a few at a time, their gradients
    accumulating; the loop normalises by the whole step's trained tokens, so the gradient is
    the same as in one pass. Memory then follows max_length, not batch_size.
    """
    lengths = [len(e.input_ids) for e in examples]
    plan = plan_rows(lengths, max_length)
    per_batch = max(1, max_length // plan.length)
    rows = [[examples[i] for i in row] for row in plan.rows]
    return [collate_packed(rows[i : i + per_batch], pad_id=pad_id, length=plan.length, dtype=dtype)
            for i in range(0, len(rows), per_batch)]


def mask_dtype(model) -> "torch.dtype":
    """The float dtype a 4D mask must have for `model` (its embeddings' dtype; sdpa wants the query's)."""
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model.get_input_embeddings().weight.dtype


# ------------------------------------------------------------------ collate


def collate_packed(
    rows: Sequence[Sequence[Rendered]], *, pad_id: int = 0, length: int | None = None, dtype=None
) -> dict[str, "torch.Tensor"]:
    """Rows of examples -> input_ids, labels, position_ids (B, T), a block-causal mask (B, 1, T, T), token_mask.

    Each row is cut to `length` (default: the longest row) and padded to it. `dtype` is the mask's
    (the model's) float dtype, float32 by default.
    """
    import torch

    length = length or max(sum(len(e.input_ids) for e in row) for row in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)  # -1 = padding, its own block
    for b, row in enumerate(rows):
        _fill_row(row, length, input_ids[b], labels[b], position_ids[b], segments[b])
    return {
        "input_ids": input_ids,
        "attention_mask": block_causal_mask(segments, dtype=dtype),
        "position_ids": position_ids,
        "labels": labels,
        "token_mask": (segments >= 0).long(),
    }


def _fill_row(row: Sequence[Rendered], length: int, ids, labels, positions, segments) -> None:
    import torch

    start = 0
    for seg, ex in enumerate(row):
        n = min(len(ex.input_ids), length - start)
        if n <= 0:
            break
        end = start + n
        ids[start:end] = torch.tensor(ex.input_ids[:n])
        labels[start:end] = torch.tensor(ex.labels[:n])
        labels[start] = IGNORE  # predicted from the previous example's last token: never trained
        positions[start:end] = torch.arange(n)
        segments[start:end] = seg
        start = end
    positions[start:] = torch.arange(length - start)  # padding: harmless positions of its own


def block_causal_mask(segments: "torch.Tensor", *, dtype=None) -> "torch.Tensor":
    """(B, T) segment ids -> (B, 1, T, T) float mask: 0 where query i may see key j (same segment, j <= i), else -inf."""
    import torch

    dtype = dtype or torch.float32
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    allowed = (same & causal)[:, None]  # (B, 1, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, float("-inf"))


def batch_stats(batch: dict[str, "torch.Tensor"]) -> tuple[int, int, int]:
    """(real tokens, padded slots B*T, loss-bearing tokens) of a batch."""
    labels = batch["labels"]
    trained = int((labels[:, 1:] != IGNORE).sum())
    return int(batch["token_mask"].sum()), labels.numel(), trained
