"""What training tells the user: the plan line, the progress bar, the metrics log, the summary."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from tunesmith.runs import layout
from tunesmith.runs.layout import RunPaths
from tunesmith.train import trackers

# Effective share of the measured matmul rate a training step reaches on CPU (small matrices,
# attention, optimizer, Python): measured ~0.6-0.8 for LoRA on the embedded model on this machine.
CPU_EFFICIENCY = 0.6
OVERHEAD_BYTES = 600e6  # torch, transformers and the Python process itself


@dataclass
class Estimate:
    tokens_per_epoch: int
    loss_tokens_per_epoch: int
    seconds: float
    peak_bytes: float


def estimate(model, train_set, plan, total_steps: int, cfg) -> Estimate:
    """Time from FLOPs per token (6N for full, 4N for adapters: no weight gradients) at a measured
    matmul rate; memory from weights, gradients, AdamW moments, activations and logits."""
    tokens = sum(len(e.input_ids) for e in train_set)
    loss_tokens = sum(sum(e.loss_mask[1:]) for e in train_set)
    trainable, total = _counts(model)
    full = cfg.method.trains == "full"
    steps_tokens = tokens / max(plan.steps_per_epoch, 1) * total_steps
    flops = (6 if full else 4) * total * steps_tokens
    seconds = flops / (_matmul_rate() * CPU_EFFICIENCY * max(plan.world_size, 1))
    return Estimate(tokens, loss_tokens, seconds, _peak_bytes(model, train_set, plan, trainable, total))


def _counts(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def _peak_bytes(model, train_set, plan, trainable: int, total: int) -> float:
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", 0)
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    layers = getattr(cfg, "num_hidden_layers", 0)
    vocab = getattr(cfg, "vocab_size", 0)
    longest = max((len(e.input_ids) for e in train_set), default=0)
    batch_tokens = longest * plan.batch_size  # one padded micro-batch of the longest examples
    activations = batch_tokens * layers * (16 * hidden + 3 * inter) * 4
    logits = batch_tokens * vocab * 4 * 3  # logits, their float copy and gradient
    return total * 4 + trainable * 16 + activations + logits + OVERHEAD_BYTES


def _matmul_rate() -> float:
    """FLOP/s of a mid-sized fp32 matmul on this machine with the current thread count."""
    import torch

    a, b = torch.randn(512, 576), torch.randn(576, 1536)
    a @ b
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 512 * 576 * 1536 * reps / max(time.perf_counter() - start, 1e-9)


def plan_line(n_train: int, n_val: int, dropped: int, plan, total: int, est: Estimate) -> str:
    epochs = total / max(plan.steps_per_epoch, 1)
    text = (f"plan: {n_train} training / {n_val} validation examples, {est.tokens_per_epoch:,} tokens per epoch "
            f"({est.loss_tokens_per_epoch:,} trained), {total} steps ({epochs:.2f} epochs of {plan.steps_per_epoch}; "
            f"{plan.batch_size} x {plan.grad_accum} accumulation x {plan.world_size} process(es) = "
            f"{plan.global_batch} examples per step), estimated {_duration(est.seconds)}, "
            f"peak memory ~{est.peak_bytes / 1e9:.1f} GB")
    if dropped:
        text += f"; {dropped} example(s) skipped: no trained tokens left after truncation"
    return text


def summary(state, wall_seconds: float, unit: str = "tokens") -> dict[str, Any]:
    """The run's figures; `unit` is what its loss is averaged over: trained tokens, or pairs (dpo / simpo)."""
    secs = max(state.train_seconds, 1e-9)
    per = {"tokens": "loss_tokens_per_s", "pairs": "pairs_per_s"}[unit]
    return {
        "steps": state.step,
        "wall_seconds": round(wall_seconds, 1),
        "train_seconds": round(state.train_seconds, 1),
        "best_step": state.best_step,
        "best_val_loss": state.best_val_loss,
        "tokens_per_s": round(state.tokens / secs, 1),
        per: round(state.loss_tokens / secs, 1),
        "padding_waste": round(1 - state.tokens / state.slots, 4) if state.slots else 0.0,
    }


SAMPLE_CHARS = 90  # of each sample answer in the terminal (metrics.jsonl and report.html have all of it)


def validation_line(step: int, result: dict | None, best: str, samples: list[dict] | None) -> str:
    """'step 40: validation loss 1.2345 (best)' and one indented line per sample answer, cut to fit."""
    head = (f"step {step}: validation loss {result['loss']:.4f}{best}" if result is not None
            else f"step {step}: before training")
    if result is not None and "reward_accuracy" in result:  # a preference run
        head += (f", reward accuracy {100 * result['reward_accuracy']:.1f}%, "
                 f"margin {result['reward_margin']:.3f}")
    lines = [head]
    for i, row in enumerate(samples or [], 1):
        text = " ".join(row["answer"].split()) or "(empty)"
        if len(text) > SAMPLE_CHARS:
            text = text[: SAMPLE_CHARS - 1] + "…"
        lines.append(f"  [{i}] {text}")
    return "\n".join(lines)


def stop_line(state, total: int | None = None) -> str | None:
    """One line on why training stopped early, naming the overfitting when that is what happened."""
    if state.stop_reason == "time_budget":
        kept = f", kept step {state.best_step}" if state.best_step is not None else ""
        return f"time budget: stopped at step {state.step} of {total}{kept}"
    if state.stop_reason != "early_stopping":
        return None
    recent = [loss for step, loss in state.train_losses if step > (state.best_step or 0)]
    at_best = [loss for step, loss in state.train_losses if step <= (state.best_step or 0)]
    falling = recent and at_best and _mean(recent[-5:]) < _mean(at_best[-5:])
    falling = falling or (recent and len(recent) > 1 and recent[-1] < recent[0])
    if falling:
        return f"overfitting: stopped at step {state.step}, kept step {state.best_step}"
    return f"early stopping: validation loss stopped improving; stopped at step {state.step}, kept step {state.best_step}"


def summary_line(state, s: dict, final, paths: RunPaths) -> str:
    best = f"{s['best_val_loss']:.4f} (step {s['best_step']})" if s["best_val_loss"] is not None else "n/a (no validation set)"
    where = final if final is not None else f"none (stopped; resume with `tunesmith train --resume {paths.name}`)"
    return (f"done: {s['steps']} steps in {_duration(s['wall_seconds'])}, best validation loss {best}, "
            f"{s['tokens_per_s']:.0f} tokens/s ({_per_second(s)}, "
            f"{100 * s['padding_waste']:.1f}% padding), deliverable: {where}")


def _per_second(s: dict) -> str:
    if "pairs_per_s" in s:
        return f"{s['pairs_per_s']:.1f} pairs/s"
    return f"{s['loss_tokens_per_s']:.0f} trained tokens/s"


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class MetricsSink:
    """metrics.jsonl on the main process, and the trackers started on `accelerator` (train/trackers.py)."""

    def __init__(self, paths: RunPaths, *, enabled: bool, accelerator=None):
        self.paths, self.enabled, self.accelerator = paths, enabled, accelerator

    def write(self, rows: list[dict]) -> None:
        if not self.enabled:
            return
        layout.append_metrics(self.paths, rows)
        if self.accelerator is not None:
            trackers.log(self.accelerator, rows)


class Printer:
    """Lines and a progress bar on the main process's terminal; silent elsewhere."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def line(self, text: str) -> None:
        if self.enabled:
            from rich.console import Console

            Console(stderr=True, highlight=False).print(text, markup=False, soft_wrap=True)

    def bar(self, total: int, done: int) -> "_Bar":
        return _Bar(total, done, self.enabled)


class _Bar(contextlib.AbstractContextManager):
    """A rich progress bar: steps, ETA, loss, tokens/s."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled, self.progress, self.task = total, done, enabled, None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=Console(stderr=True), transient=False)
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=self.done, info="")
        return self

    def update(self, step: int, metrics: dict) -> None:
        if self.progress is None:
            return
        info = f"loss {metrics['loss']:.4f}  {metrics['tokens_per_s']:.0f} tok/s"
        self.progress.update(self.task, completed=step, info=info)
        every = max(1, self.total // 10)
        if not self.progress.console.is_terminal and (step % every == 0 or step == self.total):
            # Logs and pipes get no live bar: a plain line every tenth of the run instead.
            remaining = self.progress.tasks[0].time_remaining
            eta = f", ETA {int(remaining // 60)} min {int(remaining % 60):02d} s" if remaining else ""
            self.progress.console.print(f"step {step}/{self.total}: {info}{eta}", markup=False, highlight=False)

    def note(self, text: str) -> None:
        """Lines printed above the live bar (or as plain lines before it starts)."""
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            from rich.console import Console

            Console(stderr=True, highlight=False).print(text, markup=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()
