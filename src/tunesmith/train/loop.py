"""The training loop: a plain function over accelerate, its seams (loss, batches, hooks) passed in.

    for each step's micro-batches:  forward + backward (gradients synced on the last one only)
                                    clip, optimizer step, scheduler step
                                    log; every eval_every steps validate (and sample answers), keep
                                    the best, maybe stop; every save_every steps checkpoint; stop
                                    before a step would end past the deadline (a time budget)

The loss is normalised by the loss-bearing tokens of the whole step over every process, so
gradient accumulation and DDP, FSDP or DeepSpeed give the gradient one big batch would.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    import torch

# (loss summed over the micro-batch, what it is averaged over[, {metric: summed the same way}])
LossFn = Callable[[Any, dict], "tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, dict]"]
# (loss sum, tokens, correct tokens), or {"loss": sum, "tokens" | "pairs": count, metric: sum, ...}
EvalFn = Callable[[Any, dict], "tuple[torch.Tensor, torch.Tensor, torch.Tensor] | dict"]


@dataclass
class LoopArgs:
    total_steps: int
    eval_every: int = 50
    save_every: int = 100
    patience: int = 3  # validations without improvement before stopping; 0 = never stop early
    max_grad_norm: float = 1.0
    deadline: float | None = None  # time.time() by which the last step must have ended (train.time_budget)
    validation_seconds: float = 0.0  # what one validation costs (measured for the time budget)


@dataclass
class LoopState:
    """Everything the loop knows that a checkpoint must carry to resume exactly."""

    step: int = 0  # optimizer steps done
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # validations since the last improvement
    last_good_step: int = 0  # last step whose weights are saved and finite
    stop_reason: str | None = None  # None | "early_stopping" | "time_budget" | "non_finite" | "stopped"
    tokens: int = 0  # real (non-padding) tokens seen
    slots: int = 0  # padded slots (B*T) processed
    loss_tokens: int = 0
    train_seconds: float = 0.0
    elapsed: float = 0.0  # wall seconds in the loop, validations and checkpoints included (the time budget's)
    train_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) since the best

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Hooks:
    """What the loop calls out to. Each hook is optional; `on_step` returning True stops the loop."""

    evaluate: Callable[[], dict] | None = None  # -> {"loss", "token_accuracy", ...}
    on_improved: Callable[[LoopState], None] | None = None  # a new best validation loss
    save: Callable[[LoopState], None] | None = None  # write a checkpoint of the current state
    log: Callable[[list[dict]], None] | None = None  # metric rows
    on_step: Callable[[LoopState, dict], bool] | None = None  # progress; True = stop here
    validated: Callable[[LoopState, dict], list[dict] | None] | None = None  # after a validation -> sample answers
    start: Callable[[LoopState], None] | None = None  # before the first step of this process's loop


def train_loop(model, optimizer, scheduler, accelerator, steps: Iterable, args: LoopArgs, state: LoopState,
               *, loss_fn: LossFn | None = None, hooks: Hooks = Hooks()) -> LoopState:
    """Run optimizer steps from `steps` (StepBatch items) until they end or the loop stops early.

    `loss_fn(model, micro_batch) -> (loss_sum, n_loss_tokens)`; default: train/loss.py's causal_lm_loss.
    """
    if loss_fn is None:
        from tunesmith.train.loss import causal_lm_loss as loss_fn
    if hooks.start:
        hooks.start(state)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in steps:
        started = time.perf_counter()
        since = time.time()
        loss, extra = _one_step(model, optimizer, accelerator, batch, loss_fn)
        if not math.isfinite(loss):
            state.stop_reason = "non_finite"
            _log(hooks, [{"step": state.step + 1, "split": "train", "loss": str(loss)}])
            break
        grad_norm = accelerator.clip_grad_norm_(params, args.max_grad_norm) if args.max_grad_norm > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        metrics = _step_metrics(state, batch, loss, scheduler, grad_norm, time.perf_counter() - started, accelerator)
        metrics.update(extra)
        _log(hooks, [metrics])
        state.elapsed += time.time() - since  # before the checkpoint _after_step may write carries it
        since = time.time()
        stop = _after_step(state, args, hooks, metrics, accelerator, time.perf_counter() - started)
        state.elapsed += time.time() - since
        if stop:
            break
    return state


def time_step(model, accelerator, batch, loss_fn: LossFn | None = None, repeats: int = 2) -> float:
    """Seconds one step's forward and backward take here (the fastest of `repeats`, the first warms
    up); the weights, the optimizer and the RNG are left as they were."""
    import torch

    if loss_fn is None:
        from tunesmith.train.loss import causal_lm_loss as loss_fn
    was_training = model.training
    model.train()  # as the loop runs it: dropout, activation checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the CPU and GPU generators as they were
        for _ in range(repeats):
            start = time.perf_counter()
            _one_step(model, _NoOptimizer(params), accelerator, batch, loss_fn)
            times.append(time.perf_counter() - start)
    for p in params:
        p.grad = None
    model.train(was_training)
    return min(times)


class _NoOptimizer:
    """What _one_step needs of an optimizer (zero_grad), for timing before the optimizer exists."""

    def __init__(self, params):
        self.params = params

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def _one_step(model, optimizer, accelerator, batch, loss_fn: LossFn) -> tuple[float, dict]:
    """Forward and backward over this process's micro-batches; returns the step's mean loss over all
    processes, and the mean of each metric the loss function sums alongside (a preference loss's)."""
    import torch

    world = accelerator.num_processes
    total = torch.zeros((), device=accelerator.device)
    sums: dict[str, torch.Tensor] = {}
    optimizer.zero_grad(set_to_none=True)
    for i, micro in enumerate(batch.micro):
        micro = _to(micro, accelerator.device)
        last = i == len(batch.micro) - 1
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        # DeepSpeed steps (and ZeRO reduces) inside backward only where accelerate says a step ends;
        # no_sync alone does not tell it (accelerate's no_sync is a no-op under ZeRO-2/3)
        accelerator.sync_gradients = last
        with sync, accelerator.autocast():
            loss_sum, _, *more = loss_fn(model, micro)
            # DDP averages gradients over processes: scale by world so the result is sum / all tokens.
            accelerator.backward(loss_sum * world / batch.n_loss_tokens)
        total += loss_sum.detach().float()
        for key, value in (more[0] if more else {}).items():
            sums[key] = sums.get(key, 0) + value.detach().float()
    if not sums:
        return float(accelerator.reduce(total, reduction="sum")) / batch.n_loss_tokens, {}
    keys = sorted(sums)
    reduced = accelerator.reduce(torch.stack([total, *(sums[k] for k in keys)]), reduction="sum").tolist()
    return reduced[0] / batch.n_loss_tokens, {k: round(v / batch.n_loss_tokens, 6) for k, v in zip(keys, reduced[1:])}


def _step_metrics(state: LoopState, batch, loss: float, scheduler, grad_norm, seconds: float, accelerator) -> dict:
    import torch

    real = sum(int(m["token_mask"].sum()) for m in batch.micro)
    slots = sum(m["token_mask"].numel() for m in batch.micro)
    counts = accelerator.reduce(torch.tensor([real, slots], device=accelerator.device), reduction="sum").tolist()
    state.tokens += int(counts[0])
    state.slots += int(counts[1])
    state.loss_tokens += batch.n_loss_tokens
    state.train_seconds += seconds
    state.train_losses.append((state.step, loss))
    row = {"step": state.step, "split": "train", "loss": round(loss, 6), "lr": scheduler.get_last_lr()[0],
           "tokens_per_s": round(counts[0] / max(seconds, 1e-9), 1), "examples": batch.n_examples}
    if grad_norm is not None:  # a tensor, FSDP's DTensor, or DeepSpeed's float
        from tunesmith.train.distributed import local

        row["grad_norm"] = round(local(grad_norm), 6)
    return row


def _after_step(state: LoopState, args: LoopArgs, hooks: Hooks, metrics: dict, accelerator=None,
                step_seconds: float = 0.0) -> bool:
    """Report progress, validate, checkpoint; True when the loop must stop."""
    last = state.step >= args.total_steps
    asked_to_stop = bool(hooks.on_step and hooks.on_step(state, metrics))
    validates_next = hooks.evaluate is not None and (state.step + 1) % args.eval_every == 0
    out_of_time = not last and _out_of_time(args, step_seconds + (args.validation_seconds if validates_next else 0.0),
                                            accelerator)
    stop = False
    if hooks.evaluate and (state.step % args.eval_every == 0 or last or out_of_time):
        stop = _validate(state, args, hooks)
    if out_of_time and not stop:
        state.stop_reason, stop = "time_budget", True
    if asked_to_stop and not stop:
        state.stop_reason, stop = "stopped", True
    if hooks.save and (stop or last or state.step % args.save_every == 0):
        hooks.save(state)
    return stop


def _out_of_time(args: LoopArgs, step_seconds: float, accelerator) -> bool:
    """Would one more step end past the deadline? Decided by the main process's clock for every process."""
    if args.deadline is None:
        return False
    late = time.time() + step_seconds > args.deadline
    if accelerator is None or accelerator.num_processes == 1:
        return late
    import torch

    flag = accelerator.reduce(torch.tensor([float(late and accelerator.is_main_process)], device=accelerator.device),
                              reduction="sum")
    return bool(flag.item() > 0)


def _validate(state: LoopState, args: LoopArgs, hooks: Hooks) -> bool:
    """One validation (and its sample answers); True when early stopping says stop."""
    result = hooks.evaluate()
    _log(hooks, [{"step": state.step, "split": "validation", **result}])
    loss = result["loss"]
    stop = False
    # a NaN or infinite validation loss is never the best (NaN < x is False, but the first one had no rival)
    if math.isfinite(loss) and (state.best_val_loss is None or loss < state.best_val_loss):
        state.best_val_loss, state.best_step, state.bad_evals = loss, state.step, 0
        state.train_losses = [(s, l) for s, l in state.train_losses if s >= state.step]
        if hooks.on_improved:
            hooks.on_improved(state)
    else:
        state.bad_evals += 1
        if args.patience and state.bad_evals >= args.patience:
            state.stop_reason, stop = "early_stopping", True
    samples = hooks.validated(state, result) if hooks.validated else None
    if samples:
        _log(hooks, [{"step": state.step, "split": "samples", "samples": samples}])
    return stop


def evaluate(model, batches: Iterator[dict], accelerator, eval_fn: EvalFn | None = None) -> dict:
    """Mean loss and next-token accuracy over trained labels, summed over every process.

    `eval_fn(model, batch) -> (loss_sum, n_tokens, n_correct)`, or a dict of sums with the count
    under "tokens" or "pairs" (a preference eval); default: train/loss.py's causal_lm_eval. Every
    summed metric comes back as its mean over the count.
    """
    import torch

    if eval_fn is None:
        from tunesmith.train.loss import causal_lm_eval as eval_fn
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for batch in batches:
            batch = _to(batch, accelerator.device)
            with accelerator.autocast():
                out = eval_fn(model, batch)
            if not isinstance(out, dict):
                out = {"loss": out[0], "tokens": out[1], "token_accuracy": out[2]}
            for key, value in out.items():
                sums[key] = sums.get(key, 0) + value.double()
    model.train(was_training)
    keys = sorted(sums)
    if accelerator.num_processes > 1:  # a process without a batch still reduces every key the others have
        from accelerate.utils import gather_object

        keys = sorted({k for ks in gather_object([keys]) for k in ks})
    keys = keys or ["loss", "token_accuracy", "tokens"]
    values = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64, device=accelerator.device) for k in keys])
    totals = dict(zip(keys, accelerator.reduce(values, reduction="sum").tolist()))
    unit = "pairs" if "pairs" in totals else "tokens"
    count = max(totals[unit], 1.0)
    return {"loss": round(totals.pop("loss") / count, 6),
            **{k: round(v / count, 6) for k, v in totals.items() if k != unit}, unit: int(totals[unit])}


def _log(hooks: Hooks, rows: list[dict]) -> None:
    if hooks.log:
        hooks.log(rows)


def _to(batch: dict, device) -> dict:
    """A batch's tensors on `device`; a per-layer-type attention mask is a dict of tensors (packing.py)."""
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}
