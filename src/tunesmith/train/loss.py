"""The training loss: lm_head applied only where a label is trained, in chunks, so (B, T, V) logits never exist.

`causal_lm_loss(model, batch) -> (loss_sum, n_loss_tokens)` is the loop's `loss_fn` seam. It
runs the decoder for hidden states, keeps the positions whose next token is trained, and
computes the cross-entropy over the vocabulary a chunk of positions at a time, with the
gradient of each chunk taken in the same pass (as Liger's fused linear cross-entropy does):
peak memory is one (chunk, V) block instead of (B, T, V) logits and their gradient.

Two cases take a plainer path that gives the same numbers:
- a model wrapped for DDP (its gradient hooks need the wrapper's forward), FSDP or DeepSpeed
  (their forward gathers the sharded weights, the lm_head's and embeddings' included, which a
  direct call of the decoder and of `lm_head.weight` would find in shards): the model's own
  forward with a boolean `logits_to_keep`, so logits exist only at trained positions, all at
  once (N x V, not a chunk: the documented cost of sharding);
- an lm_head that is not a plain Linear (e.g. LoRA on it), or a model that soft-caps its final
  logits (Gemma 2: cap * tanh(logits / cap)): logits at trained positions, at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

IGNORE = -100
CHUNK = 1024  # positions per lm_head chunk: 1024 x 49152 fp32 logits = 200 MB


def causal_lm_loss(model, batch: dict, *, chunk_size: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over trained positions, and their count (a 0-d long tensor)."""
    labels = batch["labels"]
    keep = _trained_positions(labels)  # (B, T) bool: position t predicts a trained label t+1
    targets = labels[:, 1:][keep[:, :-1]]  # (N,)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if wrapped_forward(model):
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (N, V)
        return cross_entropy_sum(logits, targets), keep.sum()
    lm = _causal_lm(model)
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    selected = hidden[keep]  # (N, H)
    head = lm.get_output_embeddings()
    if _plain_linear(head) and final_softcap(lm) is None:
        return linear_cross_entropy(selected, head.weight, targets, chunk_size=chunk_size), keep.sum()
    return cross_entropy_sum(output_logits(lm, selected), targets), keep.sum()


@torch.no_grad()
def causal_lm_eval(model, batch: dict, *, chunk_size: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, trained positions, correctly predicted positions) for validation, logits a chunk at a time."""
    loss, count, correct = per_row_eval(model, batch, chunk_size=chunk_size)
    return loss.sum(), count.sum(), correct.sum()


@torch.no_grad()
def per_row_eval(model, batch: dict, *, chunk_size: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of the batch: (summed NLL (B,) float32, trained positions (B,), correct predictions (B,)).

    The one evaluation loss: validation sums it, evaluation and the forgetting probe read it per example.
    """
    labels = batch["labels"]
    keep = _trained_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]  # (N,)
    rows = keep.nonzero()[:, 0]  # (N,): the row each trained position belongs to
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    loss = torch.zeros(len(labels), dtype=torch.float32, device=labels.device)
    correct = torch.zeros(len(labels), dtype=torch.long, device=labels.device)
    if is_sharded(model):  # the wrapper's forward gathers the weights: logits at trained positions, at once
        every = model(**inputs, logits_to_keep=keep, use_cache=False).logits  # (N, V)
        logits_of = lambda a, b: every[a:b]  # noqa: E731
    else:
        lm = _causal_lm(model.module if _is_ddp(model) else model)
        selected = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state[keep]  # (N, H)
        head = lm.get_output_embeddings()
        logits_of = lambda a, b: output_logits(lm, selected[a:b], head)  # noqa: E731
    for start in range(0, len(targets), chunk_size):
        logits = logits_of(start, start + chunk_size).float()  # (n, V)
        y, r = targets[start : start + chunk_size], rows[start : start + chunk_size]
        loss.index_add_(0, r, F.cross_entropy(logits, y, reduction="none"))
        correct.index_add_(0, r, (logits.argmax(-1) == y).long())
    return loss, keep.sum(dim=1), correct


def plain_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the model's own forward and loss over full (B, T, V) logits, as a sum and a count."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, (targets != IGNORE).sum()


def linear_cross_entropy(hidden, weight, targets, *, chunk_size: int = CHUNK) -> torch.Tensor:
    """sum_i CE(hidden[i] @ weight.T, targets[i]) with (chunk, V) logits at a time; gradients for both inputs."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size)


# ------------------------------------------------------------------ internals


def final_softcap(lm) -> float | None:
    """The model's final-logit soft-cap (Gemma 2's 30.0), or None."""
    cap = getattr(getattr(lm, "config", None), "final_logit_softcapping", None)
    return float(cap) if cap else None


def output_logits(lm, hidden: torch.Tensor, head=None) -> torch.Tensor:
    """The causal LM's logits for these hidden states: its lm_head, then its soft-cap when it has one,
    as the model's own forward computes them."""
    logits = (head or lm.get_output_embeddings())(hidden)
    cap = final_softcap(lm)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _trained_positions(labels: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def cross_entropy_sum(logits, targets) -> torch.Tensor:
    """Summed next-token cross-entropy of (N, V) logits against (N,) targets, in float32 (also the engine's score)."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _is_ddp(model) -> bool:
    return isinstance(model, DistributedDataParallel)


def is_sharded(model) -> bool:
    """Wrapped by FSDP (1 or 2) or DeepSpeed: its weights are gathered only inside its own forward."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return isinstance(model, (FSDPModule, FullyShardedDataParallel)) or type(model).__name__ == "DeepSpeedEngine"


def wrapped_forward(model) -> bool:
    """Must the loss call the model's own forward: DDP (its gradient hooks), FSDP and DeepSpeed (their gathering)?"""
    return _is_ddp(model) or is_sharded(model)


def _causal_lm(model):
    """The transformers causal LM inside peft and accelerate wrappers."""
    if hasattr(model, "get_base_model"):  # peft: the base model with the adapters injected
        model = model.get_base_model()
    while not hasattr(model, "get_decoder") and hasattr(model, "module"):
        model = model.module
    return model


def _plain_linear(module) -> bool:
    return type(module) is torch.nn.Linear


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):  # the head in the weights' own dtype
            h_all = hidden.to(weight.dtype)
            grad_h = torch.empty_like(h_all) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, h_all.shape[0], chunk_size):
                h = h_all[start : start + chunk_size]  # (n, H)
                y = targets[start : start + chunk_size]  # (n,)
                logits = (h @ weight.T).float()  # (n, V)
                lse = logits.logsumexp(-1)  # (n,)
                total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
                if need_h or need_w:
                    grad = _softmax_minus_onehot(logits, lse, y).to(weight.dtype)  # (n, V) d CE / d logits
                    if need_h:
                        grad_h[start : start + chunk_size] = grad @ weight
                    if need_w:
                        grad_w.addmm_(grad.T.float(), h.float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_out).to(ctx.dtypes[0]) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.dtypes[1]) if grad_w is not None else None
        return gh, gw, None, None


def _softmax_minus_onehot(logits, lse, targets):
    """softmax(logits) - onehot(targets), computed in place of `logits` (its memory is reused)."""
    grad = logits.sub_(lse[:, None]).exp_()
    grad[torch.arange(len(targets), device=targets.device), targets] -= 1
    return grad
