"""Helpers for the training tests: small canonical datasets and configs on the tiny model."""

from __future__ import annotations

import json
import random
from pathlib import Path


def sums_dataset(folder: Path, n_train: int = 24, n_val: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """'What is a plus b?' -> 'a plus b is c.' as canonical chat JSONL (train, validation)."""
    rng = random.Random(seed)
    rows = []
    seen = set()
    while len(rows) < n_train + n_val:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]})
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return train, val


def noise_dataset(folder: Path, n_train: int = 8, n_val: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """Questions with random-word answers: nothing generalises, so training past memorising overfits."""
    rng = random.Random(seed)
    words = "apple river stone cloud lamp tiger violet orbit maple sugar paper ocean glass ember".split()
    rows = [{"messages": [{"role": "user", "content": f"Code {i}?"},
                          {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(8))}]}
            for i in range(n_train + n_val)]
    folder.mkdir(parents=True, exist_ok=True)
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    val.write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return train, val


def overrides(model_dir: Path, train: Path, val: Path | None, out: Path, **train_keys) -> list[str]:
    base = {"max_steps": 6, "batch_size": 4, "eval_every": 3, "save_every": 3, "lr": 1e-3, "threads": 1,
            "warmup_ratio": 0.0, "early_stopping_patience": 0}
    base.update(train_keys)
    sets = [f"model.name={model_dir}", f"data.train={train}", f"output_dir={out}", "data.split=100/0/0",
            "method.r=16", "method.alpha=32", "train.sample_answers=0"]  # the pinned losses' settings
    sets += [f"data.validation={val}"] if val else []
    return sets + [f"train.{k}={'null' if v is None else v}" for k, v in base.items()]
