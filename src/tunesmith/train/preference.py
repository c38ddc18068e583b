"""Preference tuning: DPO (sigmoid or IPO loss) and reference-free SimPO, over pairs that share their prompt.

A pair's row is `prompt | chosen | rejected`: the prompt is computed once, and a block mask
lets each answer see the prompt and itself only, with the rejected answer's positions starting
where the chosen's do (prefix sharing). Several pairs pack into one row as SFT examples do,
each its own block. Models whose layers a block mask cannot describe get the plain layout: two
rows a pair, `prompt | chosen` and `prompt | rejected`, with an ordinary padding mask.

Every answer token is scored from the position that predicts it (the prompt's last token for
each answer's first), so a pair's log-probabilities equal those of its two conversations
scored one by one (tests/test_preference.py, within 1e-4).

The reference model's log-probabilities are computed once before the first step, from the
model as it starts (with LoRA, the adapter is still zero there: the base; with full
fine-tuning, the base weights before any step), and kept in the run folder
(reference_logps.json): no second copy of the model is held in memory, no reference forward
pass is paid at each step, and a resume reads them back. Dropout is off while preference
tuning (as TRL's disable_dropout), so the policy and the reference score alike at step 0.

Losses, per pair, with pi/ref the summed log-probabilities of an answer's trained tokens:
  sigmoid (DPO)  -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))
  ipo            ((pi_c - ref_c)/n_c - (pi_r - ref_r)/n_r - 1 / (2 beta))^2   (length-normalised, as TRL)
  simpo          -log sigmoid(beta * (pi_c/n_c - pi_r/n_r) - gamma)          (no reference)
plus `sft_weight` x the chosen answer's mean token NLL (RPO; TRL's rpo_alpha).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tunesmith.data.render import RenderedPair
from tunesmith.errors import TrainError
from tunesmith.io import atomic_write_text

if TYPE_CHECKING:
    import torch

PREFERENCE_METHODS = ("dpo", "simpo")
DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0}
CHUNK = 1024  # answer positions per lm_head chunk


@dataclass(frozen=True)
class Objective:
    """What a preference run minimises: the method's loss and its settings."""

    name: str  # dpo | simpo
    loss: str = "sigmoid"  # dpo: sigmoid | ipo
    beta: float = 0.1
    gamma: float = 0.5  # simpo's target margin
    sft_weight: float = 0.0

    @classmethod
    def of(cls, method_cfg) -> "Objective":
        beta = method_cfg.beta if method_cfg.beta is not None else DEFAULT_BETA[method_cfg.name]
        return cls(method_cfg.name, method_cfg.loss, float(beta), float(method_cfg.gamma), float(method_cfg.sft_weight))

    @property
    def needs_reference(self) -> bool:
        return self.name != "simpo"


def is_preference_method(name: str) -> bool:
    return name in PREFERENCE_METHODS


def shared_layout(model):
    """The model's attention layout for shared-prompt masks, or None when a block mask cannot describe
    its layers (then each pair takes two plain rows)."""
    from tunesmith.train.packing import attention_layout

    try:
        return attention_layout(model)
    except TrainError:
        return None


def score_pairs(model, tokenizer, examples: Sequence[dict], *, batch_size: int = 8, max_length: int | None = None,
                on_batch=None) -> list[tuple[float, float, int, int]]:
    """Per preference example: (chosen summed log-prob, rejected summed log-prob, chosen tokens, rejected tokens).

    For evaluation: rendered through the one renderer, then scored by `score_rendered`.
    """
    from tunesmith.data.render import render_pair

    pairs = [render_pair(ex, tokenizer, max_length=max_length) for ex in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return score_rendered(model, pairs, pad_id=pad, batch_size=batch_size, on_batch=on_batch)


def score_rendered(model, pairs: Sequence[RenderedPair], *, pad_id: int = 0, batch_size: int = 8, autocast=None,
                   pack: int | None = None, on_batch=None) -> list[tuple[float, float, int, int]]:
    """(chosen log-prob, rejected log-prob, chosen tokens, rejected tokens) of each pair, in order; the model in
    eval mode on its own device, no gradient (`autocast`: a context manager factory).

    pack=None: one pair a row, longest first (similar lengths share a batch). pack=N: each group of
    `batch_size` pairs packed into rows of at most N tokens as training packs them (fewer slots).
    """
    import contextlib

    import torch

    from tunesmith.train import packing
    from tunesmith.train.loop import _to

    layout = shared_layout(model)
    dtype = model.get_input_embeddings().weight.dtype
    out: list[tuple[float, float, int, int]] = [(0.0, 0.0, 0, 0)] * len(pairs)
    if pack and layout is not None:
        groups = [list(range(i, min(i + batch_size, len(pairs)))) for i in range(0, len(pairs), batch_size)]
        costs = packing.device_costs(model.device)
        passes = [[[g[i] for i in row] for row in p.rows]
                  for g in groups for p in packing.plan_rows([len(pairs[i].input_ids) for i in g], pack, **costs).passes]
    else:
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i].input_ids))
        passes = [[[i] for i in order[i : i + batch_size]] for i in range(0, len(order), batch_size)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for rows in passes:
                batch = collate_pairs([[pairs[i] for i in row] for row in rows], pad_id=pad_id, dtype=dtype,
                                      layout=layout, shared=layout is not None)
                batch = _to({k: v for k, v in batch.items() if k != "ref"}, model.device)
                with (autocast or contextlib.nullcontext)():
                    logps, counts = pair_logps(model, batch)
                flat = [i for row in rows for i in row]  # collate_pairs numbers the pairs row by row
                for i, lp, n in zip(flat, logps.double().tolist(), counts.tolist()):
                    out[i] = (lp[0], lp[1], n[0], n[1])
                if on_batch:
                    on_batch(len(flat))
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------ collate


def collate_pairs(rows: Sequence[Sequence[RenderedPair]], *, pad_id: int = 0, dtype=None, layout=None,
                  shared: bool = True) -> dict[str, "torch.Tensor"]:
    """Rows of pairs -> the model inputs and, per answer token, where it is predicted from.

    shared=True: each pair one block `prompt | chosen | rejected` (several pairs to a row, as
    given), with a 4D mask (one per layer type for `layout.per_type`); shared=False: each pair
    two rows of its own and a 2D padding mask (rows are then ignored: one pair, two rows).
    Batch keys: input_ids, attention_mask, position_ids, token_mask (B, T); score_from,
    score_token, score_pair, score_side (N,) for the N trained answer tokens (flat (b, t) index
    of the predicting position, the token, its pair, 0 chosen / 1 rejected); n_pairs; ref (P, 2)
    when every pair has its reference log-probabilities.
    """
    import torch

    pairs = [p for row in rows for p in row]
    if shared:
        segments = [[(p, "shared") for p in row] for row in rows]
    else:
        segments = [[(p, side)] for p in pairs for side in ("chosen", "rejected")]
    length = max(sum(_segment_length(p, how) for p, how in row) for row in segments)
    shape = (len(segments), length)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    block = torch.full(shape, -1, dtype=torch.long)  # which pair block a token is in (-1: padding)
    branch = torch.zeros(shape, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected
    score: list[tuple[int, int, int, int]] = []  # (from flat index, token, pair, side)
    index = {id(p): i for i, p in enumerate(pairs)}
    for b, row in enumerate(segments):
        cursor = 0
        for seg, (pair, how) in enumerate(row):
            cursor = _fill(pair, how, b, cursor, length, seg, index[id(pair)], ids, positions, block, branch, score)
        positions[b, cursor:] = torch.arange(length - cursor)
    batch: dict[str, Any] = {"input_ids": ids, "position_ids": positions, "token_mask": (block >= 0).long()}
    if shared:
        from tunesmith.train.packing import FULL

        layout = layout or FULL
        masks = {kind: branch_mask(block, branch, positions, dtype=dtype, window=w) for kind, w in layout.windows.items()}
        batch["attention_mask"] = masks if layout.per_type else masks["all"]
    else:
        batch["attention_mask"] = (block >= 0).long()
    frm, tok, pair, side = zip(*score) if score else ((), (), (), ())
    batch.update(score_from=torch.tensor(frm, dtype=torch.long), score_token=torch.tensor(tok, dtype=torch.long),
                 score_pair=torch.tensor(pair, dtype=torch.long), score_side=torch.tensor(side, dtype=torch.long),
                 n_pairs=torch.tensor(len(pairs)))
    if pairs and all(p.ref is not None for p in pairs):
        batch["ref"] = torch.tensor([p.ref for p in pairs], dtype=torch.float64)
    return batch


def _segment_length(pair: RenderedPair, how: str) -> int:
    answers = {"shared": len(pair.chosen) + len(pair.rejected), "chosen": len(pair.chosen),
               "rejected": len(pair.rejected)}[how]
    return len(pair.prompt) + answers


def _fill(pair: RenderedPair, how: str, b: int, start: int, length: int, seg: int, pair_index: int,
          ids, positions, block, branch, score: list) -> int:
    """Write one pair (or one side of it) into row b from `start`; returns where the row continues."""
    import torch

    P = len(pair.prompt)
    parts = [(0, pair.prompt, None)]
    if how in ("shared", "chosen"):
        parts.append((1, pair.chosen, pair.chosen_mask))
    if how in ("shared", "rejected"):
        parts.append((2, pair.rejected, pair.rejected_mask))
    cursor = start
    for kind, tokens, mask in parts:
        n = len(tokens)
        ids[b, cursor : cursor + n] = torch.tensor(tokens, dtype=torch.long)
        offset = 0 if kind == 0 else P
        positions[b, cursor : cursor + n] = torch.arange(offset, offset + n)
        block[b, cursor : cursor + n] = seg
        branch[b, cursor : cursor + n] = kind if how == "shared" else 0
        if mask is not None:
            for k, (t, m) in enumerate(zip(tokens, mask)):
                if m:  # the first token of an answer is predicted by the prompt's last
                    frm = start + P - 1 if k == 0 else cursor + k - 1
                    score.append((b * length + frm, t, pair_index, kind - 1))
        cursor += n
    return cursor


def branch_mask(block: "torch.Tensor", branch: "torch.Tensor", positions: "torch.Tensor", *, dtype=None,
                window: int | None = None) -> "torch.Tensor":
    """(B, T) block, branch and position ids -> (B, 1, T, T) float mask, 0 where query i may see key j.

    i sees j in the same block when j's position is not after i's (and within the window, when
    there is one) and j is in the prompt or in i's own branch: each answer sees the prompt and
    itself, never the other answer. Padding is a block of its own (never a fully masked row).
    """
    import torch

    dtype = dtype or torch.float32
    qi, kj = positions[:, :, None], positions[:, None, :]
    allowed = (block[:, :, None] == block[:, None, :]) & (kj <= qi)
    allowed &= (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    if window is not None:
        allowed &= qi - kj < window
    mask = torch.zeros(allowed[:, None].shape, dtype=dtype)
    return mask.masked_fill_(~allowed[:, None], float("-inf"))


# ------------------------------------------------------------------ log-probabilities


def pair_logps(model, batch: dict, *, chunk_size: int = CHUNK) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(summed log-probability (P, 2) float32, trained tokens (P, 2)) of each pair's (chosen, rejected)."""
    import torch

    token_logps = _token_logps(model, batch, chunk_size)  # (N,)
    n = int(batch["n_pairs"])
    slot = batch["score_pair"] * 2 + batch["score_side"]
    sums = torch.zeros(n * 2, dtype=torch.float32, device=token_logps.device).index_add(0, slot, token_logps.float())
    counts = torch.zeros(n * 2, dtype=torch.long, device=slot.device).index_add_(0, slot, torch.ones_like(slot))
    return sums.view(n, 2), counts.view(n, 2)


def _token_logps(model, batch: dict, chunk_size: int) -> "torch.Tensor":
    """log p(token | what precedes it) for every scored answer token, through the model's decoder."""
    import torch

    from tunesmith.train.loss import _causal_lm, _is_ddp, _plain_linear, final_softcap, output_logits, wrapped_forward

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    frm, targets = batch["score_from"], batch["score_token"]
    B, T = batch["input_ids"].shape
    if _is_ddp(model) and not torch.is_grad_enabled():  # no gradient hooks to serve: no collective either
        model = model.module
    if wrapped_forward(model):  # the wrapper's forward (DDP's gradient hooks, FSDP's and DeepSpeed's gathering),
        # logits only at predicting positions
        keep = torch.zeros(B * T, dtype=torch.bool, device=frm.device)
        keep[frm] = True
        logits = model(**inputs, logits_to_keep=keep.view(B, T), use_cache=False).logits  # (K, V)
        rank = keep.long().cumsum(0) - 1
        return torch.log_softmax(logits.float(), -1)[rank[frm]].gather(1, targets[:, None]).squeeze(1)
    lm = _causal_lm(model)
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state.flatten(0, 1)[frm]  # (N, H)
    head = lm.get_output_embeddings()
    if _plain_linear(head) and final_softcap(lm) is None:
        return linear_log_probs(hidden, head.weight, targets, chunk_size=chunk_size)
    return torch.log_softmax(output_logits(lm, hidden).float(), -1).gather(1, targets[:, None]).squeeze(1)


def linear_log_probs(hidden, weight, targets, *, chunk_size: int = CHUNK) -> "torch.Tensor":
    """log_softmax(hidden @ weight.T)[i, targets[i]] for each i, (chunk, V) logits at a time, in both passes."""
    return _LinearLogProbs.apply(hidden, weight, targets, chunk_size)


def _autograd_function():
    import torch

    class LinearLogProbs(torch.autograd.Function):
        """Forward keeps only each row's log-sum-exp; backward recomputes a chunk's logits at a time."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, chunk_size):
            with torch.autocast(hidden.device.type, enabled=False):
                h_all = hidden.to(weight.dtype)
                out = torch.empty(h_all.shape[0], dtype=torch.float32, device=hidden.device)
                lse = torch.empty_like(out)
                for start in range(0, h_all.shape[0], chunk_size):
                    logits = (h_all[start : start + chunk_size] @ weight.T).float()
                    lse[start : start + chunk_size] = logits.logsumexp(-1)
                    y = targets[start : start + chunk_size]
                    out[start : start + chunk_size] = logits.gather(1, y[:, None]).squeeze(1) - lse[start : start + chunk_size]
            ctx.save_for_backward(h_all, weight, targets, lse)
            ctx.chunk, ctx.dtype = chunk_size, hidden.dtype
            return out

        @staticmethod
        def backward(ctx, grad_out):
            h_all, weight, targets, lse = ctx.saved_tensors
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            grad_h = torch.empty_like(h_all) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            with torch.autocast(h_all.device.type, enabled=False):
                for start in range(0, h_all.shape[0], ctx.chunk):
                    h = h_all[start : start + ctx.chunk]
                    y = targets[start : start + ctx.chunk]
                    # d logp / d logits = onehot - softmax, times the incoming gradient of each row
                    g = (h @ weight.T).float().sub_(lse[start : start + ctx.chunk, None]).exp_().neg_()
                    g[torch.arange(len(y), device=y.device), y] += 1
                    g.mul_(grad_out[start : start + ctx.chunk, None].float())
                    g = g.to(weight.dtype)
                    if need_h:
                        grad_h[start : start + ctx.chunk] = g @ weight
                    if need_w:
                        grad_w.addmm_(g.T.float(), h.float())
            gh = grad_h.to(ctx.dtype) if grad_h is not None else None
            gw = grad_w.to(weight.dtype) if grad_w is not None else None
            return gh, gw, None, None

    return LinearLogProbs


class _LazyFunction:
    """The autograd Function, built on first use (importing this module does not import torch)."""

    fn = None

    def apply(self, *args):
        if _LazyFunction.fn is None:
            _LazyFunction.fn = _autograd_function()
        return _LazyFunction.fn.apply(*args)


_LinearLogProbs = _LazyFunction()


# ------------------------------------------------------------------ losses


def loss_terms(obj: Objective, logps: "torch.Tensor", counts: "torch.Tensor", ref: "torch.Tensor | None"):
    """Per pair: (loss (P,), chosen reward (P,), rejected reward (P,)) for the objective."""
    import torch.nn.functional as F

    n = counts.clamp(min=1).to(logps.dtype)
    if obj.name == "simpo":
        avg = logps / n
        rewards = obj.beta * avg
        loss = -F.logsigmoid(rewards[:, 0] - rewards[:, 1] - obj.gamma)
    else:
        if ref is None:
            raise TrainError("a DPO batch has no reference log-probabilities",
                             "this is a tunesmith bug: the reference is computed before the first step")
        delta = logps - ref.to(logps.dtype)  # (P, 2): policy - reference
        rewards = obj.beta * delta
        if obj.loss == "ipo":  # per-token log-ratios, in the loss and in the rewards logged (as TRL)
            rewards = obj.beta * delta / n
            h = delta[:, 0] / n[:, 0] - delta[:, 1] / n[:, 1]
            loss = (h - 1 / (2 * obj.beta)) ** 2
        else:
            loss = -F.logsigmoid(rewards[:, 0] - rewards[:, 1])
    if obj.sft_weight:
        loss = loss + obj.sft_weight * (-logps[:, 0] / n[:, 0])
    return loss, rewards[:, 0], rewards[:, 1]


def make_loss(obj: Objective):
    """The loop's loss_fn: (loss summed over pairs, pairs, metric sums) for one micro-batch."""

    def preference_loss(model, batch: dict):
        logps, counts = pair_logps(model, batch)
        loss, chosen, rejected = loss_terms(obj, logps, counts, batch.get("ref"))
        return loss.sum(), batch["n_pairs"], _metric_sums(logps, chosen, rejected)

    return preference_loss


def make_eval(obj: Objective):
    """The loop's eval_fn: {"loss", "pairs", metric sums} for one validation batch."""
    import torch

    def preference_eval(model, batch: dict) -> dict:
        with torch.no_grad():
            logps, counts = pair_logps(model, batch)
            loss, chosen, rejected = loss_terms(obj, logps, counts, batch.get("ref"))
        return {"loss": loss.sum(), "pairs": batch["n_pairs"], **_metric_sums(logps, chosen, rejected)}

    return preference_eval


def _metric_sums(logps, chosen, rejected) -> dict:
    d = lambda t: t.detach().float().sum()  # noqa: E731
    return {"reward_accuracy": d(chosen > rejected), "reward_margin": d(chosen - rejected),
            "chosen_logp": d(logps[:, 0]), "rejected_logp": d(logps[:, 1])}


# ------------------------------------------------------------------ the reference


def reference_logps(model, pairs: Sequence[RenderedPair], accelerator, *, pad_id: int = 0, batch_size: int = 8,
                    pack: int | None = None, on_batch=None) -> list[tuple[float, float]]:
    """The model's summed log-probabilities of each pair's (chosen, rejected) (`score_rendered`).

    Every process scores its share (every world_size-th pair) and the shares are summed over
    processes, so each ends with all of them.
    """
    import torch

    world, rank = accelerator.num_processes, accelerator.process_index
    mine = list(range(rank, len(pairs), world))
    scores = score_rendered(accelerator.unwrap_model(model), [pairs[i] for i in mine], pad_id=pad_id,
                            batch_size=batch_size, autocast=accelerator.autocast, pack=pack, on_batch=on_batch)
    out = torch.zeros(len(pairs), 2, dtype=torch.float64, device=accelerator.device)
    if mine:
        out[mine] = torch.tensor([s[:2] for s in scores], dtype=torch.float64, device=accelerator.device)
    if world > 1:
        out = accelerator.reduce(out, reduction="sum")
    return [(float(c), float(r)) for c, r in out.tolist()]


def attach_reference(run_dir: Path, splits: dict[str, list[RenderedPair]], compute, fingerprint: str | None,
                     *, is_main: bool = True, broadcast=None) -> bool:
    """Give every pair its reference log-probabilities: read from the run folder, or computed and saved.

    `compute(pairs) -> [(chosen, rejected)]` runs on every process; the file is written by the
    main process (atomically), which alone decides whether it is read back (`broadcast(flag)` gives
    its decision to every process). Returns True when they were computed now.
    """
    path = run_dir / REFERENCE_FILE
    saved = _read_reference(path, fingerprint, {k: len(v) for k, v in splits.items()}) if is_main else None
    computed = saved is None
    if broadcast is not None:  # every process computes (a collective) or none: the main process decides
        computed = broadcast(computed)
        if not computed and saved is None:
            saved = _read_reference(path, fingerprint, {k: len(v) for k, v in splits.items()})
    if computed:
        saved = {name: compute(pairs) for name, pairs in splits.items()}
        if is_main:
            atomic_write_text(path, json.dumps({"fingerprint": fingerprint, **saved}))
    for name, pairs in splits.items():
        for p, ref in zip(pairs, saved[name]):
            p.ref = tuple(ref)
    return computed


REFERENCE_FILE = "reference_logps.json"


def _read_reference(path: Path, fingerprint: str | None, sizes: dict[str, int]) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a damaged file is recomputed (the model it came from is the base, still at hand)
    if data.get("fingerprint") != fingerprint or any(len(data.get(k) or []) != n for k, n in sizes.items()):
        return None
    if not all(math.isfinite(x) for k in sizes for pair in data[k] for x in pair):
        return None
    return data


def disable_dropout(model) -> int:
    """Set every dropout's probability to 0 (LoRA's included); returns how many were on."""
    import torch

    on = 0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and m.p > 0:
            m.p, on = 0.0, on + 1
        config = getattr(m, "config", None)
        for key in ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop"):  # passed functionally
            if getattr(config, key, 0) and isinstance(getattr(config, key), float):
                setattr(config, key, 0.0)
                on += 1
        if isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0:
            m.attention_dropout, on = 0.0, on + 1
    return on


def check_starts_as_base(model) -> None:
    """The reference is the model before any step: true for adapters only while they start at zero
    (LoRA's and DoRA's B matrices); refuse an initialisation that is not the base."""
    for name, p in model.named_parameters():
        if "lora_B" in name and p.detach().abs().max().item() != 0:
            raise TrainError(f"the LoRA adapter does not start at zero ({name}), so the model before the first step "
                             "is not the base and cannot be DPO's reference",
                             "use the default LoRA initialisation for dpo")
