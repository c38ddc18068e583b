"""What training tells the user: the plan line, the progress bar, the metrics log, the summary."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.runs import layout
from tunesmith.runs.layout import RunPaths
from tunesmith.train import trackers

# Effective share of the measured matmul rate a training step reaches (small matrices, attention,
# optimizer, Python). CPU: measured ~0.6-0.8 for LoRA on the embedded model on this machine.
CPU_EFFICIENCY = 0.6
# CUDA: a guess until measured (bench/RESULTS.md has no GPU step-time figure against the matmul rate yet).
CUDA_EFFICIENCY = 0.4
# What a process holds besides the parts peak_bytes counts. CPU: torch, transformers and the Python process
# itself. CUDA: cuBLAS workspaces and the caching allocator's slack, a guess (the CUDA context is already
# out of what mem_get_info calls free).
OVERHEAD_BYTES = {"cpu": 600e6, "cuda": 500e6}
LOGIT_COPIES = 3  # of the loss's (positions, V) fp32 block: the logits, their float copy and their gradient


@dataclass(frozen=True)
class Machine:
    """Where one process trains and how the processes share the model; `machine(acc, model)` reads it."""

    device: str  # "cpu" | "cuda:0"
    label: str  # "CPU (2 threads)" | "cuda:0 (NVIDIA H200, 139.8 GB)"
    dtype: str  # the matmuls': "float32" on a CPU; on CUDA bfloat16 / float16 under mixed precision or half weights
    free_bytes: float | None  # what one process may use there: free now plus what it holds already (None: unknown)
    processes: int = 1
    sharded: int = 0  # what the processes split, as ZeRO's stages: 1 optimizer state, 2 + gradients, 3 + weights
    distributed: str = "NO"  # accelerate's DistributedType: NO | MULTI_GPU | MULTI_CPU | FSDP | DEEPSPEED | ...

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]


@dataclass
class Estimate:
    tokens_per_epoch: int
    loss_tokens_per_epoch: int
    seconds: float
    peak_bytes: float
    machine: Machine
    too_big: str | None = None  # the plan line's warning when the peak passes the free memory


def estimate(model, train_set, plan, total_steps: int, cfg, machine: Machine) -> Estimate:
    """Time from FLOPs per token (6N for full, 4N for adapters: no weight gradients) at the matmul rate
    measured on the run's device in its compute dtype; memory from `peak_bytes`."""
    tokens = sum(len(e.input_ids) for e in train_set)
    loss_tokens = sum(sum(e.loss_mask[1:]) for e in train_set)
    total = sum(p.numel() * (2 if _four_bit(p) else 1) for p in model.parameters())
    full = cfg.method.trains == "full"
    steps_tokens = tokens / max(plan.steps_per_epoch, 1) * total_steps
    flops = (6 if full else 4) * total * steps_tokens
    efficiency = CUDA_EFFICIENCY if machine.kind == "cuda" else CPU_EFFICIENCY
    seconds = flops / (_matmul_rate(machine.device, machine.dtype) * efficiency * max(plan.world_size, 1))
    checkpointing = cfg.train.gradient_checkpointing is True
    peak = peak_bytes(model, train_set, plan.batch_size, cfg, machine, checkpointing=checkpointing).total
    too_big = None
    if machine.free_bytes is not None and peak > machine.free_bytes:
        too_big = (f"that is more than the {machine.free_bytes / 1e9:.1f} GB free on {machine.device}: "
                   f"try {_lighter(cfg, machine, checkpointing)}")
    return Estimate(tokens, loss_tokens, seconds, peak, machine, too_big)


@dataclass(frozen=True)
class Peak:
    """One process's peak memory in a training step, by part (bytes)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead


def peak_bytes(model, train_set, batch_size: int, cfg, machine: Machine, *, checkpointing: bool) -> Peak:
    """What one process holds at the peak of a step of `batch_size` examples a micro-batch.

    Weights as loaded (a 4-bit weight as its packed bytes); gradients of the trainable ones, in their
    dtype; torch AdamW's two moments, zeros_like each weight (its dtype; no fp32 master copy: the
    optimizer runs over the weights as they are), except under DeepSpeed with half-precision compute,
    whose optimizer keeps fp32 master weights and fp32 moments; what ZeRO / FSDP shards is divided by
    the processes. Activations of one micro-batch of the longest examples (one pass on a CPU with
    packing: at most data.max_length slots) through every layer, or with checkpointing each layer's
    input plus one layer's recompute. Logits: the loss's (positions, V) fp32 block, CHUNK positions at
    a time (all trained positions at once under DDP: train/loss.py), and when the lm_head trains the
    fp32 gradient the chunks add up into.
    """
    from tunesmith.train import packing
    from tunesmith.train.loss import CHUNK

    # the weights and what training adds to them; ZeRO / FSDP split them over the processes
    n = max(machine.processes, 1)
    split = {stage: n if machine.sharded >= stage else 1 for stage in (1, 2, 3)}
    params = list(model.parameters())
    trained = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    gradients = sum(p.numel() * p.element_size() for p in trained)
    optimizer = 2 * gradients  # exp_avg and exp_avg_sq
    if machine.distributed == "DEEPSPEED" and machine.dtype != "float32":
        optimizer = 12 * sum(p.numel() for p in trained)  # its fp32 master copy and fp32 moments: 4 + 4 + 4 bytes
    # one micro-batch (one pass): its activations through the layers, and the loss's logits block
    c, size = model.config, _element_size(machine.dtype)
    hidden, layers = getattr(c, "hidden_size", 0), getattr(c, "num_hidden_layers", 0)
    per_token = (16 * hidden + 3 * getattr(c, "intermediate_size", 4 * hidden)) * size  # one layer's saved tensors
    tokens = max((len(e.input_ids) for e in train_set), default=0) * batch_size  # (B, T), padded
    if cfg.train.packing:  # a CPU runs a packed micro-batch in passes of at most max_length slots
        tokens = min(tokens, packing.device_costs(machine.device)["pass_slots"] or cfg.data.max_length)
    if checkpointing:  # each layer's input (B, T, H) kept; one layer's activations recomputed at a time
        activations = tokens * (layers * hidden * size + per_token)
    else:
        activations = tokens * layers * per_token
    positions = min(sum(sorted(e.n_trained for e in train_set)[-batch_size:]), tokens)  # the most a pass trains
    ddp = n > 1 and machine.distributed not in ("FSDP", "DEEPSPEED")
    logits = (positions if ddp else min(positions, CHUNK)) * getattr(c, "vocab_size", 0) * 4 * LOGIT_COPIES
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not ddp and head is not None and head.weight.requires_grad:  # the fused loss sums its gradient in fp32
        logits += head.weight.numel() * 4
    return Peak(weights / split[3], gradients / split[2], optimizer / split[1], activations, logits,
                OVERHEAD_BYTES.get(machine.kind, OVERHEAD_BYTES["cuda"]))


def _element_size(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _four_bit(p) -> bool:
    """A bitsandbytes 4-bit weight: two parameters packed in each byte."""
    return getattr(p, "quant_state", None) is not None


def _lighter(cfg, machine: Machine, checkpointing: bool) -> str:
    """What would lower the peak, as settings to try."""
    helps = [] if checkpointing else ["train.gradient_checkpointing=true"]
    helps.append("a smaller train.batch_size or data.max_length")
    method = "method.weights" if cfg.method.preference else "method.name"
    if cfg.method.trains == "full":
        helps.append(f"{method}=lora" + (" or qlora" if machine.kind == "cuda" else ""))
    elif cfg.method.trains == "lora" and machine.kind == "cuda":
        helps.append(f"{method}=qlora")
    return ", ".join(helps[:-1]) + f" or {helps[-1]}" if len(helps) > 1 else helps[0]


def machine(acc, model) -> Machine:
    """The Machine of this process of `acc`: its device, compute dtype and free memory, and what the
    processes shard (DeepSpeed's ZeRO stage, FSDP's sharding strategy)."""
    import torch

    device = torch.device(acc.device)
    distributed = getattr(acc.distributed_type, "value", str(acc.distributed_type))
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        # what this process's caching allocator holds (a model already moved there) is its own to use
        free = torch.cuda.mem_get_info(index)[0] + torch.cuda.memory_reserved(index)
        half = {"bf16": "bfloat16", "fp16": "float16"}.get(str(acc.mixed_precision))
        dtype = half or str(next((p.dtype for p in model.parameters() if p.is_floating_point()),
                                 torch.float32)).removeprefix("torch.")
        return Machine(f"cuda:{index}", f"cuda:{index} ({props.name}, {props.total_memory / 1e9:.1f} GB)", dtype,
                       free, acc.num_processes, _sharded(acc, distributed), distributed)
    threads = torch.get_num_threads()
    return Machine("cpu", f"CPU ({threads} thread{'s' if threads != 1 else ''})", "float32",
                   _free_ram(acc.num_processes), acc.num_processes, _sharded(acc, distributed), distributed)


def _sharded(acc, distributed: str) -> int:
    """What the processes split, as ZeRO's stages: DeepSpeed's own; FSDP full / hybrid shard 3, grad-op shard 2."""
    if distributed == "DEEPSPEED":
        return int(acc.state.deepspeed_plugin.zero_stage)
    if distributed != "FSDP":
        return 0
    plugin = acc.state.fsdp_plugin
    strategy = getattr(plugin, "reshard_after_forward", None)  # FSDP2: a bool; FSDP1: the sharding strategy
    if strategy is None:
        strategy = getattr(plugin, "sharding_strategy", None)
    if isinstance(strategy, bool):
        return 3 if strategy else 2
    name = str(getattr(strategy, "name", strategy)).upper()
    return 0 if "NO_SHARD" in name else 2 if "GRAD_OP" in name or "ZERO2" in name else 3


def _free_ram(processes: int) -> float | None:
    """MemAvailable shared by this machine's processes, plus this process's own RSS (the weights it
    loaded already count in the peak); None where /proc is not there to read."""
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        status = Path("/proc/self/status").read_text().splitlines()
        available = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:"))
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return (available / max(processes, 1) + rss) * 1024  # kB


def _matmul_rate(device: str = "cpu", dtype: str = "float32") -> float:
    """FLOP/s of a matmul on `device` in `dtype`: mid-sized on a CPU (with the current thread count),
    4096 x 4096 on a GPU (a small one would time the kernel launch)."""
    import torch

    n, k, m = (512, 576, 1536) if device == "cpu" else (4096, 4096, 4096)
    a = torch.randn(n, k, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(k, m, device=device, dtype=getattr(torch, dtype))

    def sync() -> None:  # CUDA kernels run asynchronously: wait for them before reading the clock
        if device != "cpu":
            torch.cuda.synchronize(device)

    a @ b  # warm-up (and cuBLAS's choice of kernel)
    sync()
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n * k * m * reps / max(time.perf_counter() - start, 1e-9)


def plan_line(n_train: int, n_val: int, dropped: int, plan, total: int, est: Estimate) -> str:
    epochs = total / max(plan.steps_per_epoch, 1)
    text = (f"plan: {n_train} training / {n_val} validation examples, {est.tokens_per_epoch:,} tokens per epoch "
            f"({est.loss_tokens_per_epoch:,} trained), {total} steps ({epochs:.2f} epochs of {plan.steps_per_epoch}; "
            f"{plan.batch_size} x {plan.grad_accum} accumulation x {plan.world_size} process(es) = "
            f"{plan.global_batch} examples per step), estimated {_duration(est.seconds)}, "
            f"peak memory ~{est.peak_bytes / 1e9:.1f} GB{_where(est.machine)}")
    if est.too_big:
        text += f"; {est.too_big}"
    if dropped:
        text += f"; {dropped} example(s) skipped: no trained tokens left after truncation"
    return text


def _where(m: Machine) -> str:
    """' on CPU (2 threads)', or with several processes ' per process, on cuda:0 (...) and 3 more'."""
    if m.processes > 1:
        return f" per process, on {m.label} and {m.processes - 1} more"
    return f" on {m.label}"


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
