"""Is this data ready to fine-tune on? A verdict from the counts, and a measured time per epoch.

The thresholds follow the project seed: under ~100 usable examples is too little (start with
prompt engineering, or collect more), 100-200 is enough to start, and many errors or duplicates
mean the data must be fixed first. The time per epoch comes from a short real forward/backward
pass of the chosen model and method on a couple of rendered rows, never from a guess.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from tunesmith.data.render import pad_batch

TOO_LITTLE = 100
ENOUGH = 200
MAX_ERROR_SHARE = 0.10  # more than this share of rows with errors: fix the data first
MAX_DUP_SHARE = 0.20
TRAIN_SHARE = 0.8  # the default 80/10/10 split: what one epoch goes over


def verdict(summary: dict) -> dict:
    """{'level', 'message', 'reasons', 'problems'} from a check summary.

    `problems` lists every verdict that applies ({'level', 'message'}, most pressing first): a
    small file with many errors is both "fix the data first" and "too little data". `level` is
    the first of them (fix-data | too-little | enough-to-start | ready); `message` joins them all.
    """
    rows, usable = summary["rows_read"], summary["usable_rows"]
    error_share = summary["rows_with_errors"] / rows if rows else 1.0
    dup_share = (summary["exact_duplicates"] + summary["near_duplicates"]) / rows if rows else 0.0
    reasons = [f"{usable} usable examples (of {rows} rows read)"]
    problems = []
    if not rows:
        problems.append(("fix-data", "fix the data first: no rows could be read"))
    elif error_share > MAX_ERROR_SHARE or dup_share > MAX_DUP_SHARE:
        reasons.append(f"{error_share:.0%} of rows have errors, {dup_share:.0%} are duplicates")
        problems.append(("fix-data", "fix the data first: too many errors or duplicates to train on"))
    if rows and usable < TOO_LITTLE:
        problems.append(("too-little", "too little data: start with prompt engineering, or collect more "
                                       "(aim for 100+ examples)"))
    elif rows and usable < ENOUGH and not problems:
        problems.append(("enough-to-start", "enough to start: expect a style/format effect; more examples will help"))
    problems = problems or [("ready", "ready to fine-tune")]
    return {"level": problems[0][0], "message": "; ".join(m for _, m in problems), "reasons": reasons,
            "problems": [{"level": level, "message": m} for level, m in problems]}


def epoch_tokens(summary: dict) -> dict | None:
    """Tokens one epoch goes over (the train share of the usable rows), from the token statistics."""
    tokens = summary.get("tokens")
    if not tokens or not tokens.get("rows"):
        return None
    per_row = tokens["total_tokens"] / tokens["rows"]
    trained_per_row = tokens["trainable_tokens"] / tokens["rows"]
    train_rows = int(summary["usable_rows"] * TRAIN_SHARE)
    return {"train_rows": train_rows, "tokens": int(per_row * train_rows), "trainable_tokens": int(trained_per_row * train_rows)}


def measure_speed(model, tokenizer, examples: list[dict], *, method_cfg: Any = None, max_length: int = 1024,
                  steps: int = 2, threads: int | None = None) -> dict:
    """Tokens per second of real training steps (forward, backward, AdamW) on two rendered rows.

    `method_cfg` None or name 'full' trains every weight; 'lora' wraps the model with LoRA
    adapters through tunesmith.models.adapters. One warm-up step is not timed.
    """
    import torch

    rows = _pick_rows(examples, tokenizer, max_length)
    batch = pad_batch(rows, tokenizer.pad_token_id or 0)  # (B, T) each
    if method_cfg is not None and getattr(method_cfg, "trains", getattr(method_cfg, "name", "lora")) in ("lora", "qlora"):
        from tunesmith.models.adapters import apply_lora

        model = apply_lora(model, method_cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    durations = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step pays for allocation and kernel selection
            durations.append(time.perf_counter() - start)
    n_tokens = int(batch["attention_mask"].sum())
    seconds = statistics.median(durations)
    return {"tokens_per_second": n_tokens / seconds, "rows": len(rows), "tokens": n_tokens,
            "seconds_per_step": seconds, "trainable_parameters": sum(p.numel() for p in params)}


def _pick_rows(examples: list[dict], tokenizer, max_length: int) -> list:
    """The two rows closest to the median length: a fair sample of the file."""
    from tunesmith.data.render import render_example

    rendered = [render_example(e, tokenizer, max_length=max_length) for e in examples[:64]]
    rendered = [r for r in rendered if r.n_trained] or rendered
    median = statistics.median(len(r.input_ids) for r in rendered)
    return sorted(rendered, key=lambda r: abs(len(r.input_ids) - median))[:2]


def estimate(summary: dict, speed: dict) -> dict:
    """Time per epoch from the measured speed and the epoch's tokens."""
    tokens = epoch_tokens(summary) or {"tokens": 0, "trainable_tokens": 0, "train_rows": 0}
    seconds = tokens["tokens"] / speed["tokens_per_second"] if speed["tokens_per_second"] else None
    return {**tokens, "tokens_per_second": round(speed["tokens_per_second"], 1),
            "seconds_per_epoch": None if seconds is None else round(seconds, 1), "measured_on_rows": speed["rows"]}


def add_estimate(summary: dict, sample: list[dict], model_spec: str, method: str = "lora", *,
                 max_length: int = 1024, threads: int | None = None) -> dict:
    """Load `model_spec`, measure training speed with `method` on two sample rows, and put the
    time-per-epoch estimate into summary['verdict']['estimate']."""
    from tunesmith.config import MethodConfig
    from tunesmith.models.load import load_model

    if not sample or not summary.get("tokens"):
        return summary
    if "chosen" in sample[0]:  # a preference step (two sequences, and a reference model) is not what this measures
        summary["notes"].append("no time-per-epoch estimate for preference pairs: the speed probe measures "
                                "supervised fine-tuning steps only")
        return summary
    model, tokenizer = load_model(model_spec)
    # a fixed rank: `auto` is chosen by a training run from its own split, and a step's time hardly depends on it
    speed = measure_speed(model, tokenizer, sample, method_cfg=MethodConfig(name=method, r=16, alpha=32), max_length=max_length,
                          threads=threads)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    summary["verdict"]["estimate"] = {"model": model_spec, "method": method, "threads": threads or "default",
                                      **estimate(summary, speed), "load_average": round(load, 1), "cpu_cores": cores,
                                      "busy": load > cores}  # other work on the cores slows the measurement
    return summary
