"""`auto` training settings: chosen from the data, the method and the model, by the rules in this one file.

    key                 rule (docs/auto.md has the same table, with the reasons)
    train.epochs        3 passes; more when 3 would show the model fewer than 100 examples (at most 25),
                        fewer when more than 25,000 (at least 1)
    train.batch_size    examples / 50 rounded down to a power of two, between 4 and 64, and at most
                        32,768 tokens a step (the 95th-percentile example length); divided by
                        grad_accum x processes
    train.lr            lora / qlora 2e-4 (1e-4 from 10B parameters); full 5e-5 below 1B, 2e-5 below 10B, 1e-5 above;
                        dpo / simpo 2e-5 with adapters, 1e-6 full
    method.r            8 below 100k trained tokens an epoch, 16 below 2M, else 32
    method.alpha        2 x r (the LoRA scale stays 2 whatever the rank)
    train.eval_every    at least 8 validations a run and 2 an epoch; under a time budget, validating
                        takes at most a quarter of it
    train.save_every    at every validation (adapters), every second one (full: a checkpoint is the whole model)
    train.gradient_checkpointing
                        on when one process's estimated peak memory without it passes 85% of what its
                        device has free (and with it the peak is lower), else off

Explicit values always win. `choose` returns the config with every `auto` replaced and, per
chosen key, its value and the reason printed in the plan line and kept in the run's manifest
("resolved"), where `runs show` reads it and a resume takes it back (a time budget's step count
was measured, not derived). Gradient checkpointing is the exception: it is chosen for the
machine, not the data, so a resume (perhaps on another machine) chooses it again; and it needs
the memory estimate of the chosen batch (`Shape.memory`): without one it stays `auto`.

The epoch rule is OpenAI's (the fine-tuning data-preparation cookbook: TARGET_EPOCHS = 3,
MIN_TARGET_EXAMPLES = 100, MAX_TARGET_EXAMPLES = 25,000, MAX_DEFAULT_EPOCHS = 25). Since the
deliverable is the best validation step and validation now runs often, a pass too many costs
time, not quality: early stopping and the best checkpoint take care of overfitting.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tunesmith.config import Config, replace
from tunesmith.errors import ConfigError

EPOCHS_TARGET, EPOCHS_MAX = 3, 25
MIN_EXAMPLES_SEEN, MAX_EXAMPLES_SEEN = 100, 25_000
EXAMPLES_PER_BATCH_ITEM = 50  # global batch = examples / 50, as a power of two
BATCH_MIN, BATCH_MAX = 4, 64
STEP_TOKENS_MAX = 32_768
LORA_LR, LORA_LR_LARGE, LARGE_MODEL = 2e-4, 1e-4, 10e9
FULL_LR = ((1e9, 5e-5), (10e9, 2e-5), (math.inf, 1e-5))  # (below this many parameters, rate)
# dpo / simpo: LoRA a tenth of SFT's rate; full fine-tuning TRL DPOConfig's default
PREFERENCE_LORA_LR, PREFERENCE_FULL_LR = 2e-5, 1e-6
RANKS = ((100_000, 8), (2_000_000, 16), (math.inf, 32))  # (below this many trained tokens an epoch, rank)
MIN_VALIDATIONS, MIN_VALIDATIONS_PER_EPOCH = 8, 2
BUDGET_VALIDATION_SHARE = 0.25  # under a time budget, validating takes at most this share of it
CHECKPOINTING_SHARE = 0.85  # of the free memory a peak may fill before activations are recomputed


@dataclass(frozen=True)
class Memory:
    """One process's estimated peak without and with gradient checkpointing, and what its device has free
    (bytes; free None: unknown). train/progress.py estimates them."""

    peak: float
    peak_checkpointed: float
    free: float | None


@dataclass(frozen=True)
class Shape:
    """What the rules look at: the rendered training set, the model, the process layout and (once the
    batch size is chosen) the memory a step needs."""

    n_examples: int
    p95_tokens: int  # 95th-percentile rendered length
    trained_tokens: int  # loss-bearing tokens in one epoch
    n_params: int
    method: str
    grad_accum: int = 1
    world_size: int = 1
    objective: str = "sft"  # sft | dpo | simpo
    memory: Memory | None = None  # known once the batch size is chosen: see the module's docstring

    @classmethod
    def of(cls, train_set, n_params: int, method: str, grad_accum: int, world_size: int,
           objective: str = "sft") -> "Shape":
        lengths = sorted(len(e.input_ids) for e in train_set)
        p95 = lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))] if lengths else 0
        trained = sum(sum(e.loss_mask[1:]) for e in train_set)
        return cls(len(train_set), p95, trained, n_params, method, grad_accum, world_size, objective)


@dataclass(frozen=True)
class Choice:
    value: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason}


def choose(cfg: Config, shape: Shape, *, total_steps: int | None = None, max_validations: int | None = None,
           previous: dict[str, dict] | None = None) -> tuple[Config, dict[str, Choice]]:
    """`cfg` with every `auto` key chosen; {dotted key: Choice} for the chosen ones.

    `total_steps` (a time budget's measured count) replaces the planned length for the cadence rules,
    and `max_validations` caps how many validations it may hold (a quarter of the budget).
    `previous` (a resumed run's manifest "resolved") is taken back for keys still `auto`, so a
    resume trains with exactly what the run started with.
    """
    from tunesmith.train.batching import StepPlan

    t, m = cfg.train, cfg.method
    previous = previous or {}
    chosen: dict[str, Choice] = {}

    def pick(key: str, value: Any, rule) -> Any:
        if value != "auto":
            return value
        if key in previous:
            chosen[key] = Choice(previous[key]["value"], previous[key]["reason"])
        else:
            chosen[key] = rule()
        return chosen[key].value

    # max_steps overrides epochs, and full fine-tuning has no adapter: those stay unchosen (and unprinted)
    epochs = t.epochs if t.max_steps else pick("train.epochs", t.epochs, lambda: _epochs(shape.n_examples))
    batch = pick("train.batch_size", t.batch_size, lambda: _batch(shape))
    plan = StepPlan(shape.n_examples, batch, shape.grad_accum, shape.world_size)
    planned = plan.total_steps(epochs, t.max_steps)
    total = total_steps or planned
    eval_every = pick("train.eval_every", t.eval_every, lambda: _eval_every(total, plan.steps_per_epoch, max_validations))
    save_every = pick("train.save_every", t.save_every, lambda: _save_every(eval_every, shape.method))
    lr = pick("train.lr", t.lr, lambda: _lr(shape.method, shape.n_params, shape.objective))
    adapter = shape.method != "full"
    r = pick("method.r", m.r, lambda: _rank(shape.trained_tokens)) if adapter else m.r
    alpha = pick("method.alpha", m.alpha, lambda: Choice(2 * r, "2 x r")) if adapter else m.alpha
    checkpointing = t.gradient_checkpointing
    if checkpointing == "auto" and shape.memory is not None:  # never taken back: chosen for this machine
        chosen["train.gradient_checkpointing"] = _checkpointing(shape.memory)
        checkpointing = chosen["train.gradient_checkpointing"].value
    resolved = replace(cfg, train={"epochs": epochs, "batch_size": batch, "eval_every": eval_every,
                                   "save_every": save_every, "lr": lr,
                                   "gradient_checkpointing": checkpointing},
                       method={"r": r, "alpha": alpha})
    return resolved, chosen


def plan_line(chosen: dict[str, Choice]) -> str | None:
    """'auto: epochs 3 (402 examples: ...), batch_size 8 (...), ...' or None when nothing was auto."""
    if not chosen:
        return None
    return "auto: " + ", ".join(f"{key.split('.', 1)[1]} {_show(c.value)} ({c.reason})" for key, c in chosen.items())


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------ the rules


def _epochs(n: int) -> Choice:
    if n * EPOCHS_TARGET < MIN_EXAMPLES_SEEN:
        epochs = min(EPOCHS_MAX, math.ceil(MIN_EXAMPLES_SEEN / max(n, 1)))
        return Choice(epochs, f"{n} examples: {epochs} passes show the model at least {MIN_EXAMPLES_SEEN}")
    if n * EPOCHS_TARGET > MAX_EXAMPLES_SEEN:
        epochs = max(1, MAX_EXAMPLES_SEEN // n)
        return Choice(epochs, f"{n:,} examples: {epochs} pass(es) keep it near {MAX_EXAMPLES_SEEN:,} examples seen")
    return Choice(EPOCHS_TARGET, f"{n} examples: {EPOCHS_TARGET} passes; early stopping keeps the best step")


def _batch(shape: Shape) -> Choice:
    by_count = 2 ** int(math.log2(max(shape.n_examples / EXAMPLES_PER_BATCH_ITEM, 1)))
    global_batch = min(BATCH_MAX, max(BATCH_MIN, by_count))
    reason = f"{shape.n_examples} examples / {EXAMPLES_PER_BATCH_ITEM}, a power of two in [{BATCH_MIN}, {BATCH_MAX}]"
    by_tokens = max(1, STEP_TOKENS_MAX // max(shape.p95_tokens, 1))
    if by_tokens < global_batch:
        global_batch = 2 ** int(math.log2(by_tokens))
        reason = f"at most {STEP_TOKENS_MAX:,} tokens a step of {shape.p95_tokens}-token examples"
    per_process = max(1, global_batch // (shape.grad_accum * shape.world_size))
    if per_process * shape.grad_accum * shape.world_size != global_batch:
        reason += f"; {global_batch} over {shape.grad_accum} accumulation x {shape.world_size} process(es)"
    return Choice(per_process, reason)


def _lr(method: str, n_params: int, objective: str = "sft") -> Choice:
    size = f"{n_params / 1e9:.2g}B parameters" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M parameters"
    if objective != "sft":  # a preference pulls on a model that already answers: see PREFERENCE_LORA_LR
        rate = PREFERENCE_LORA_LR if method in ("lora", "qlora") else PREFERENCE_FULL_LR
        return Choice(rate, f"{objective} with {method}, {size}")
    if method in ("lora", "qlora"):
        rate = LORA_LR if n_params < LARGE_MODEL else LORA_LR_LARGE
        return Choice(rate, f"{method}, {size}")
    rate = next(r for below, r in FULL_LR if n_params < below)
    return Choice(rate, f"full fine-tuning, {size}")


def _rank(trained_tokens: int) -> Choice:
    r = next(rank for below, rank in RANKS if trained_tokens < below)
    return Choice(r, f"{trained_tokens:,} trained tokens an epoch")


def _eval_every(total: int, steps_per_epoch: int, max_validations: int | None = None) -> Choice:
    every = max(1, min(total // MIN_VALIDATIONS, steps_per_epoch // MIN_VALIDATIONS_PER_EPOCH))
    runs = math.ceil(total / every)
    if max_validations is not None and runs > max_validations:
        every = math.ceil(total / max(max_validations, 1))
        runs = math.ceil(total / every)
        return Choice(every, f"{_n(runs, 'validation')} in {total} steps: at most {BUDGET_VALIDATION_SHARE:.0%} of the "
                             "time budget")
    return Choice(every, f"{_n(runs, 'validation')} in {total} steps, at least {MIN_VALIDATIONS_PER_EPOCH} an epoch")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _save_every(eval_every: int, method: str) -> Choice:
    if method == "full":
        return Choice(2 * eval_every, "every second validation: a full checkpoint is the whole model")
    return Choice(eval_every, "at every validation")


def _checkpointing(memory: Memory) -> Choice:
    if memory.free is None:
        return Choice(False, f"peak ~{_gb(memory.peak)}; the free memory is unknown here")
    if memory.peak > CHECKPOINTING_SHARE * memory.free and memory.peak_checkpointed < memory.peak:
        fits = "" if memory.peak_checkpointed <= memory.free else "; still more than free: see the plan line"
        return Choice(True, f"peak ~{_gb(memory.peak)} without it, ~{_gb(memory.peak_checkpointed)} with it, "
                            f"of {_gb(memory.free)} free{fits}")
    return Choice(False, f"peak ~{_gb(memory.peak)} of {_gb(memory.free)} free")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


# ------------------------------------------------------------------ time budget

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(hours?|h|minutes?|min|m|seconds?|sec|s)?", re.IGNORECASE)
_UNIT = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, key: str = "train.time_budget") -> float:
    """'90s', '10m', '1h30m', '2.5h', '600' (seconds) -> seconds; a ConfigError naming the key otherwise."""
    s = str(text).strip()
    pos, total = 0, 0.0
    for match in _DURATION.finditer(s):
        if s[pos:match.start()].strip():
            break
        unit = (match.group(2) or "s")[0].lower()
        total += float(match.group(1)) * _UNIT[unit]
        pos = match.end()
    if not s or s[pos:].strip() or total <= 0:
        raise ConfigError(f"{key}: {text!r} is not a duration", "write e.g. 90s, 10m, 1h30m or a number of seconds")
    return total


def budget_validations(budget: float, spent: float, eval_seconds: float) -> int | None:
    """How many validations fit in a quarter of what is left of the budget (None: they cost nothing)."""
    if eval_seconds <= 0:
        return None
    return max(1, int(BUDGET_VALIDATION_SHARE * (budget - spent) // eval_seconds))


def budget_steps(budget: float, spent: float, step_seconds: float, eval_seconds: float, eval_every: int,
                 planned: int, reserve: float) -> int:
    """How many steps fit in what is left of the budget: each step, its share of a validation, and a
    reserve for writing the deliverable. At least 1 (the caller refuses a budget shorter than one step)."""
    left = budget - spent - reserve
    per_step = step_seconds + eval_seconds / max(eval_every, 1)
    fits = int(left // per_step) if per_step > 0 else planned
    return max(1, min(planned, fits))
