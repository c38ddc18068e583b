"""Packing rendered examples into rows of at most max_length tokens, attention kept inside each example.

A packed row holds several examples back to back. Three things keep them apart, because
`position_ids` alone do not confine attention on CPU (DESIGN.md, measured):
- a 4D float mask (B, 1, T, T) of 0 / -inf, block-diagonal and causal;
- `position_ids` that restart at 0 for each example;
- label -100 on the first token of each example, so no loss predicts across a boundary.
Padding at the end of a row forms its own block (never a fully masked row: that gives NaN).
A 4D mask replaces the model's own, sliding window included, so a sliding-window layer gets the
block mask cut to its window too: one mask for every layer (Mistral), or one per layer type for
models with `layer_types` (Gemma 2/3, Qwen); see AttentionLayout.

How the mask reaches attention is `train.packed_attention` (packed_attention()):
- "dense": the float mask above, through the model's own attention (SDPA or eager). A dense
  mask keeps SDPA off its fused kernels and costs (T, T) per row, so rows stay within max_length
  and a pass pads its rows to the longest.
- "flex": the model attends through torch's `flex_attention` (transformers'
  attn_implementation="flex_attention") and the mask is a `BlockMask` built by
  `create_block_mask` from per-token document ids: same document AND causal AND, for a
  sliding-window layer type, the window; a dict of them keyed by layer type as above. Attention
  then skips the masked blocks, so a pass is one row of all its examples back to back: no
  padding (the padding-free packing FlashAttention's varlen kernel gives, without it). CUDA only:
  on the CPU torch's flex_attention has no backward pass.

Batches are dicts of tensors: the model inputs (`input_ids`, `attention_mask`, `position_ids`),
`labels`, and `token_mask` (B, T) = 1 on real tokens, for the padding-waste figure. Which
examples make up a step, and the padded (unpacked) path, live in batching.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

from tunesmith.data.render import Rendered
from tunesmith.errors import TrainError

if TYPE_CHECKING:
    import torch
    from torch.nn.attention.flex_attention import BlockMask

Attention = Literal["dense", "flex"]

IGNORE = -100

# The cost model the planner minimises, in token-equivalents of forward + backward, fitted to
# timings on 2 CPU cores with SmolLM2-135M + LoRA (bench/RESULTS.md, "packing cost model"):
# seconds ~ 0.13 per pass + 3.5 ms per slot + 1.9 us per (row length)^2, i.e.
# - a row of T tokens adds T/ATTENTION_TOKENS to each of its tokens' cost (attention is
#   computed over the whole row, masked blocks included): four rows of 256 in one pass take
#   3.9 s where one row of 1024 takes 5.6 s;
# - a forward pass costs PASS_TOKENS tokens' worth on top of its slots (one row of 128 takes
#   0.62 s, four of them in one pass 1.92 s). On a GPU a pass is far dearer than a token, so
#   there a micro-batch runs as one pass (see device_costs()).
# Layouts the model ranks within ~5% of each other measured within noise of each other.
ATTENTION_TOKENS = 2000
PASS_TOKENS = 40


@dataclass(frozen=True)
class Pass:
    """One forward pass: rows of example indices, every row padded to `length`."""

    rows: list[list[int]]
    length: int


@dataclass(frozen=True)
class RowPlan:
    """A micro-batch's examples as rows, grouped into the forward passes that run them one after another."""

    passes: list[Pass]

    @property
    def rows(self) -> list[list[int]]:
        return [row for p in self.passes for row in p.rows]

    @property
    def slots(self) -> int:
        return sum(len(p.rows) * p.length for p in self.passes)

    def waste(self, lengths: Sequence[int]) -> float:
        """Fraction of the slots that are padding."""
        used = sum(lengths[i] for row in self.rows for i in row)
        return 1 - used / self.slots if self.passes else 0.0


@dataclass(frozen=True)
class AttentionLayout:
    """How a model's layers attend, for its packed masks: a sliding window (None: full causal) per layer type.

    per_type: the model takes a {layer type: 4D mask} dict (configs with `layer_types`); else
    one mask serves every layer and `windows` has the single key "all".
    """

    windows: dict[str, int | None]
    per_type: bool = False


FULL = AttentionLayout({"all": None})
PACKABLE_LAYER_TYPES = ("full_attention", "sliding_attention")


def attention_layout(model) -> AttentionLayout:
    """The AttentionLayout of `model` (or of its config); TrainError for layer kinds a block mask cannot express."""
    config = getattr(_unwrap(model), "config", model)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not types:
        return AttentionLayout({"all": window})
    other = sorted(set(types) - set(PACKABLE_LAYER_TYPES))
    if other:
        raise TrainError(f"packing is not supported for architecture '{config.model_type}': its {', '.join(other)} "
                         "layers cannot be kept inside each example by a block mask", "set train.packing=false")
    return AttentionLayout({t: window if t == "sliding_attention" else None for t in sorted(set(types))}, per_type=True)


def packed_attention(model, setting: str, device, *, packs: bool = True) -> Attention:
    """train.packed_attention resolved for `model` training on `device`: "dense" or "flex" (module docstring).

    auto: flex on a CUDA device where flex_attention can train this model, else dense (the CPU
    path was measured with dense); flex: TrainError naming what is missing. packs=False (no
    packing, or preference pairs, whose shared-prompt masks are not document masks): dense,
    which check_config makes sure was not asked as flex.
    """
    if setting == "dense" or not packs:
        return "dense"
    missing = flex_missing(model, device)
    if setting == "auto":
        return "dense" if missing else "flex"
    if missing:
        raise TrainError(f"train.packed_attention=flex needs {missing}", "set train.packed_attention=auto or dense")
    return "flex"


def flex_missing(model, device) -> str | None:
    """What torch's flex_attention lacks to train `model` on `device` (None: nothing)."""
    import importlib.util

    if not str(device).startswith("cuda"):
        return "a CUDA GPU (on the CPU torch's flex_attention has no backward pass)"
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return "a torch with torch.nn.attention.flex_attention (2.5 or later)"
    if importlib.util.find_spec("triton") is None:
        return "the triton package (flex_attention compiles its CUDA kernels with it)"
    model = _unwrap(model)
    if not getattr(model, "_supports_flex_attn", False):
        return f"a model type transformers runs through flex_attention (this one is {model.config.model_type!r})"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "attention_dropout", 0.0):
        return f"a model without attention dropout (flex_attention has none; this one has {config.attention_dropout})"
    return None


def attend_with(model, attention: Attention) -> None:
    """Make `model` take the packed masks of `attention`: flex switches it to flex_attention (for every
    forward pass: validation and sample answers too); dense keeps its own attention."""
    if attention == "flex":
        _unwrap(model).set_attn_implementation("flex_attention")


def attention_of(model) -> Attention:
    """The packed mask `model` takes: "flex" when it attends through flex_attention (attend_with), else "dense"."""
    return "flex" if _unwrap(model).config._attn_implementation == "flex_attention" else "dense"


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


def plan_rows(lengths: Sequence[int], max_length: int, *, attention_tokens: int | None = None,
              pass_tokens: int | None = None, pass_slots: int | None = None) -> RowPlan:
    """Pack a micro-batch's examples into rows of at most `max_length` tokens, and the rows into
    forward passes of at most `pass_slots` slots (default max_length), at the lowest cost.

    Candidate row capacities: for each row count, the shortest that fits (bisection over
    first-fit-decreasing). For each, the rows are sorted by length and cut into passes by
    dynamic programming; a pass pads its rows to its longest only, so rows of unequal length
    go in passes of their own unless sharing one costs less (pass_cost). attention_tokens=0
    and pass_tokens=0: fewest padded slots only.
    """
    if not lengths:
        return RowPlan([])
    attention_tokens = ATTENTION_TOKENS if attention_tokens is None else attention_tokens
    pass_tokens = PASS_TOKENS if pass_tokens is None else pass_tokens
    pass_slots = pass_slots or max_length
    longest = min(max(lengths), max_length)
    total = sum(min(n, max_length) for n in lengths)
    best: tuple[float, RowPlan] | None = None
    seen: set[int] = set()
    for n_rows in range(1, len(lengths) + 1):
        low = max(longest, math.ceil(total / n_rows))
        if low > max_length:
            continue
        capacity = _shortest_fit(lengths, n_rows, low, max_length)
        if capacity is not None and capacity not in seen:
            seen.add(capacity)
            rows = first_fit_decreasing(lengths, capacity)
            cost, plan = _passes(rows, lengths, max_length, pass_slots, attention_tokens, pass_tokens)
            if best is None or cost < best[0]:
                best = (cost, plan)
        # More rows cannot be shorter than the longest example; but first-fit-decreasing may
        # need more rows than the bound says ([120, 65, 65, 65] in 128: four, not three).
        if low == longest and capacity is not None:
            break
    assert best is not None, "a row count equal to the number of examples always fits"
    return best[1]


def pass_cost(n_rows: int, length: int, attention_tokens: int, pass_tokens: int) -> float:
    """Token-equivalents of one forward pass of n_rows rows of `length` slots."""
    slots = n_rows * length
    return pass_tokens + (slots * (1 + length / attention_tokens) if attention_tokens else slots)


def _passes(rows: list[list[int]], lengths: Sequence[int], max_length: int, pass_slots: int,
            attention_tokens: int, pass_tokens: int) -> tuple[float, RowPlan]:
    """Rows (longest first) cut into consecutive passes at the lowest total pass_cost."""
    loads = [sum(min(lengths[i], max_length) for i in row) for row in rows]
    order = sorted(range(len(rows)), key=lambda r: (-loads[r], r))
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest passes for the j longest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):  # rows i..j-1 share a pass padded to loads[order[i]]
            length = loads[order[i]]
            if (j - i) * length > pass_slots and j - i > 1:
                break
            cost = best[i] + pass_cost(j - i, length, attention_tokens, pass_tokens)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes, j = [], n
    while j > 0:
        i = cut[j]
        passes.append(Pass([rows[r] for r in order[i:j]], loads[order[i]]))
        j = i
    return best[n], RowPlan(passes[::-1])


def _shortest_fit(lengths: Sequence[int], n_rows: int, low: int, high: int) -> int | None:
    """The smallest capacity in [low, high] whose first-fit-decreasing packing uses at most n_rows rows."""
    if len(first_fit_decreasing(lengths, high)) > n_rows:
        return None
    while low < high:
        mid = (low + high) // 2
        if len(first_fit_decreasing(lengths, mid)) <= n_rows:
            high = mid
        else:
            low = mid + 1
    return high


def packed_micro_batches(
    examples: Sequence[Rendered], *, max_length: int, pad_id: int = 0, dtype=None, pass_tokens: int | None = None,
    pass_slots: int | None = None, layout: AttentionLayout = FULL, attention: Attention = "dense", device=None,
) -> list[dict[str, "torch.Tensor"]]:
    """A micro-batch's examples -> packed batches, one per forward pass, run one after another.

    Activations grow with the tokens of one forward pass (~2 MB per token for a 135M Llama with
    LoRA in fp32), so on a CPU no pass holds more than max_length slots (pass_slots); the
    gradients of a step's passes accumulate and the loop normalises by the whole step's trained
    tokens, so the gradient is the same as in one pass. Memory then follows max_length, not
    batch_size. Dense: each pass is padded to its own longest row only. Flex: each pass is one
    row of at most pass_slots tokens (default max_length), not padded; its BlockMasks are made
    on `device`, the model's.
    """
    lengths = [len(e.input_ids) for e in examples]
    if attention == "flex":
        plan = flex_plan(lengths, pass_slots or max_length)
    else:
        plan = plan_rows(lengths, max_length, pass_tokens=pass_tokens, pass_slots=pass_slots)
    return [collate_packed([[examples[i] for i in row] for row in p.rows], pad_id=pad_id, length=p.length, dtype=dtype,
                           layout=layout, attention=attention, device=device)
            for p in plan.passes]


def flex_plan(lengths: Sequence[int], capacity: int) -> RowPlan:
    """Passes of one row each, examples back to back up to `capacity` tokens: no padding.

    The flex path's plan: a BlockMask lets attention skip the blocks it masks, so a long row of
    short examples does not cost (T, T), and rows need not share a pass (which pads them).
    """
    rows = first_fit_decreasing(lengths, capacity)
    return RowPlan([Pass([row], sum(min(lengths[i], capacity) for i in row)) for row in rows])


def device_costs(device) -> dict[str, int | None]:
    """The planner's pass cost and size for `device` (keyword arguments of packed_micro_batches).

    CPU: the fitted PASS_TOKENS, and passes of at most max_length slots (memory follows the
    pass). GPU: launching the ~thousands of kernels of a pass costs more than its arithmetic
    (measured on an H200 with SmolLM2-135M: a step's time was the number of passes times a
    fixed cost), so each micro-batch runs as one pass, as in every other trainer; memory is
    then set by batch_size, as there.
    """
    if str(device).startswith("cpu"):
        return {"pass_tokens": PASS_TOKENS, "pass_slots": None}
    return {"pass_tokens": 1_000_000, "pass_slots": 1 << 40}


def mask_dtype(model) -> "torch.dtype":
    """The float dtype a 4D mask must have for `model` (its embeddings' dtype; sdpa wants the query's)."""
    return _unwrap(model).get_input_embeddings().weight.dtype


def _unwrap(model):
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


# ------------------------------------------------------------------ collate


def collate_packed(
    rows: Sequence[Sequence[Rendered]], *, pad_id: int = 0, length: int | None = None, dtype=None,
    layout: AttentionLayout = FULL, attention: Attention = "dense", device=None,
) -> dict[str, "torch.Tensor"]:
    """Rows of examples -> input_ids, labels, position_ids (B, T), a block-causal mask (B, 1, T, T), token_mask.

    Each row is cut to `length` (default: the longest row) and padded to it. `dtype` is the mask's
    (the model's) float dtype, float32 by default. With a per-type `layout` the mask is a dict
    {layer type: (B, 1, T, T)}; sliding-window layers' masks are cut to the window. attention
    "flex": the masks are BlockMasks of the same pattern (document_block_mask), made on `device`
    (default the CPU), where the model runs: their mask function reads the segment ids there.
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
    if attention == "flex":
        on_device = segments.to(device or "cpu")
        masks = {kind: document_block_mask(on_device, window=w) for kind, w in layout.windows.items()}
    else:
        masks = {kind: block_causal_mask(segments, dtype=dtype, window=w) for kind, w in layout.windows.items()}
    return {
        "input_ids": input_ids,
        "attention_mask": masks if layout.per_type else masks["all"],
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


def block_causal_mask(segments: "torch.Tensor", *, dtype=None, window: int | None = None) -> "torch.Tensor":
    """(B, T) segment ids -> (B, 1, T, T) float mask: 0 where query i may see key j (same segment, j <= i,
    and i - j < window when there is one, as transformers' sliding windows), else -inf."""
    import torch

    dtype = dtype or torch.float32
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T)
    if window is not None:
        causal &= ~torch.ones(T, T, dtype=torch.bool).tril(-window)  # drop keys `window` or more behind
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    allowed = (same & causal)[:, None]  # (B, 1, T, T)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, float("-inf"))


def document_block_mask(segments: "torch.Tensor", *, window: int | None = None) -> "BlockMask":
    """(B, T) segment ids -> a flex_attention BlockMask (B, 1, T, T) that allows what block_causal_mask
    allows (same segment, j <= i, i - j < window when there is one), on the segments' device.

    On CUDA create_block_mask is compiled, as torch advises: uncompiled it evaluates the mask over
    every (i, j) at once, int64 segment ids included (8 B * T * T: 0.5 GB for a row of 8192). On
    the CPU (tests: flex does not train there) it is not, which spares inductor's C++ compile.
    """
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(b, h, q, k):  # index tensors, called by create_block_mask and inside the kernel
        keep = (segments[b, q] == segments[b, k]) & (q >= k)
        return keep & (q - k < window) if window is not None else keep

    B, T = segments.shape
    make = torch.compile(create_block_mask) if segments.is_cuda else create_block_mask
    return make(allowed, B, None, T, T, device=segments.device)


def batch_stats(batch: dict[str, "torch.Tensor"]) -> tuple[int, int, int]:
    """(real tokens, padded slots B*T, loss-bearing tokens) of a batch."""
    labels = batch["labels"]
    trained = int((labels[:, 1:] != IGNORE).sum())
    return int(batch["token_mask"].sum()), labels.numel(), trained
