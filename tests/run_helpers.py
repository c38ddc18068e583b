"""A tiny finished LoRA run by the run-folder contract, for the evaluation and UI tests (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

QA = [("What is the capital of France?", "Paris."), ("How many legs does a spider have?", "Eight."),
      ("What colour is the sky?", "Blue."), ("Who wrote Hamlet?", "William Shakespeare."),
      ("What is 2+2?", "4"), ("Which planet is the largest?", "Jupiter.")]
TRAIN = [("Name the capital of Italy.", "Rome."), ("How many legs does an insect have?", "Six."),
         ("What colour is grass?", "Green."), ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
         ("What is 3+3?", "6"), ("Which planet is closest to the sun?", "Mercury.")]


def chat_rows(pairs):
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def peaked_copy(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model with larger weights (conftest.peak_weights): varied greedy answers that depend on the prompt."""
    from conftest import peak_weights

    from tunesmith.models.load import load_model

    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    model, _ = load_model(str(folder))
    peak_weights(model, 0)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def make_run(base: Path, run_dir: Path, *, final: bool = True, config: str = "eval:\n  max_new_tokens: 6\n  batch_size: 4\n") -> Path:
    """A completed LoRA run folder by the contract: manifest, config, metrics, data splits, final/ adapter."""
    import torch

    from tunesmith.config import MethodConfig
    from tunesmith.models import adapters
    from tunesmith.models.load import load_model

    run_dir.mkdir(parents=True, exist_ok=True)
    if final:
        model, tok = load_model(str(base))
        peft_model = adapters.apply_lora(model, MethodConfig(r=4, alpha=8, dropout=0.0))
        torch.manual_seed(1)
        with torch.no_grad():  # LoRA B starts at zero (a no-op); make the adapter change the answers
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        adapters.save_adapter(peft_model, run_dir / "final")
        tok.save_pretrained(str(run_dir / "final"))
    manifest = {"name": run_dir.name, "status": "completed" if final else "failed", "base_model": str(base),
                "base_model_path": str(base), "method": "lora", "best_step": 4, "best_val_loss": 2.5, "steps": 4}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "config.yaml").write_text(config)
    metrics = [{"step": s, "split": "train", "loss": 4.0 - 0.5 * s} for s in range(1, 5)]
    metrics += [{"step": s, "split": "validation", "loss": 3.5 - 0.25 * s} for s in (2, 4)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    write_jsonl(run_dir / "data" / "test.jsonl", chat_rows(QA))
    write_jsonl(run_dir / "data" / "train.jsonl", chat_rows(TRAIN))
    return run_dir


SYSTEM = "You answer in one short sentence."


def chat_ready_run(tiny_model_dir: Path, root: Path) -> Path:
    """`root/runs/run-1`: a finished LoRA run on a peaked copy of the tiny model (`root/base`) that trained with
    the system prompt SYSTEM; the UI tests chat with it, compare it and export it."""
    base = peaked_copy(tiny_model_dir, root / "base")
    config = f"data:\n  system: {SYSTEM}\neval:\n  max_new_tokens: 6\n  batch_size: 4\n"
    return make_run(base, root / "runs" / "run-1", config=config)
