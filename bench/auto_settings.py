"""`auto` training settings against the fixed defaults they replaced, on real data: held-out score and time.

    python bench/auto_settings.py examples/support-faq/faq.jsonl --system "You answer ..."
    python bench/auto_settings.py tests/assets/shared-schema.jsonl --limit 0

For each setting the same `tunesmith train` (Python API) on the same split (data.split 80/10/10,
seed 42), then `tunesmith eval` of the tuned model alone on the run's test split (greedy, no
probe). "before" is what the defaults were until `auto`: 2 epochs, lr 2e-4, batch 8, LoRA r 16,
alpha 32, validation every 50 steps, a checkpoint every 100, no sample answers. Prints each run's
steps, validations, wall time and held-out token F1 / ROUGE-L / exact match, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

BEFORE = ["train.epochs=2", "train.lr=2e-4", "train.batch_size=8", "method.r=16", "method.alpha=32",
          "train.eval_every=50", "train.save_every=100", "train.sample_answers=0"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--system", default=None)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N test examples (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    a = p.parse_args()
    from tunesmith.evaluate.workflow import evaluate_run
    from tunesmith.train.finetune import finetune

    out = a.out or Path(tempfile.mkdtemp(prefix="tunesmith-auto-bench-"))
    common = [f"model.name={a.model}", f"data.train={a.data.resolve()}", f"output_dir={out}", "train.seed=42"]
    common += [f"data.system={a.system}"] if a.system else []
    results = {}
    for name, sets in (("auto", []), ("before", BEFORE)):
        started = time.time()
        run = finetune(None, overrides=tuple(common + sets), name=name)
        train_s = time.time() - started
        rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
        report = evaluate_run(run.dir, strategies=["tuned"], probe="none", limit=a.limit or None,
                              max_new_tokens=a.max_new_tokens, quiet=True).report
        tuned = report["strategies"]["tuned"]
        results[name] = {"steps": run.steps, "best_step": run.best_step, "stop": run.stop_reason,
                         "validations": sum(r["split"] == "validation" for r in rows), "train_s": round(train_s, 1),
                         "best_val_loss": run.best_val_loss, "n_test": report.get("n_examples"),
                         **{k: tuned.get(k) for k in ("token_f1", "rouge_l", "exact_match")}}
        print(name, json.dumps(results[name]), flush=True)
    auto, before = results["auto"], results["before"]
    print(f"\n{a.data.name}: auto/before time {auto['train_s'] / before['train_s']:.2f}x; "
          f"token F1 {auto['token_f1']:.4f} vs {before['token_f1']:.4f}, ROUGE-L {auto['rouge_l']:.4f} vs "
          f"{before['rouge_l']:.4f}, exact {auto['exact_match']:.4f} vs {before['exact_match']:.4f}; validations "
          f"{auto['validations']} vs {before['validations']}; runs in {out}")


if __name__ == "__main__":
    main()
