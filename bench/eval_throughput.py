"""Evaluation throughput: `compare` (5 strategies) against the loop a user would write, same prompts, one run.

    python bench/eval_throughput.py                  # the embedded SmolLM2-135M, 50 FAQ test examples
    python bench/eval_throughput.py --quick          # 10 examples, 32 new tokens (a smoke run)
    python bench/eval_throughput.py --run RUN        # an existing run (default: a 6-step LoRA run made here)

(a) the plain loop: for every strategy and every example, one `model.generate` on that strategy's
    prompt (greedy, the same max_new_tokens and stop tokens), the base model for base/prompt/rag
    and the run's model for tuned/tuned+rag. Only generation is timed: the loop is given the
    prompts tunesmith built (retrieval and few-shot picks included) for free.
(b) `tunesmith.compare(...)` end to end with the forgetting probe off: loading, retrieval,
    batched generation through the one engine, the response loss, metrics, bootstrap intervals
    and the report, all timed.
Prints examples/s of both (examples x strategies over seconds) and `RESULT compare_vs_loop=<b/a>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["base", "prompt", "rag", "tuned", "tuned+rag"]


def main() -> int:
    args = _args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="tunesmith-eval-bench-") as scratch:
        run = args.run or _quick_run(Path(scratch))
        test = _test_file(run, Path(scratch), args.examples)
        t0 = time.perf_counter()
        compare_s = _compare(run, test, args)
        loop_s, n = _plain_loop(run, test, args)
    total = n * len(STRATEGIES)
    loop_rate, compare_rate = total / loop_s, total / compare_s
    print(f"{n} examples x {len(STRATEGIES)} strategies, up to {args.max_new_tokens} new tokens, "
          f"{args.threads} torch threads ({time.perf_counter() - t0:.0f} s in all)")
    print(f"(a) plain loop, one generate per example per strategy: {loop_s:7.1f} s  {loop_rate:6.2f} examples/s")
    print(f"(b) tunesmith compare, end to end:                     {compare_s:7.1f} s  {compare_rate:6.2f} examples/s")
    print(f"RESULT compare_vs_loop={compare_rate / loop_rate:.2f}")
    print(json.dumps({"examples": n, "strategies": len(STRATEGIES), "max_new_tokens": args.max_new_tokens,
                      "loop_s": round(loop_s, 1), "compare_s": round(compare_s, 1),
                      "compare_vs_loop": round(compare_rate / loop_rate, 3)}))
    return 0


def _quick_run(scratch: Path) -> str:
    """A 6-step LoRA run on the bundled FAQ (its test split is what gets evaluated)."""
    from tunesmith.config import load_config
    from tunesmith.train.finetune import finetune

    cfg = load_config(ROOT / "examples" / "support-faq" / "config.yaml",
                      overrides=[f"output_dir={scratch / 'runs'}", "train.max_steps=6", "train.eval_every=6",
                                 "train.save_every=6", "eval.probe=none"])
    return str(finetune(cfg, name="eval-bench", show_progress=False).dir)


def _test_file(run: str, scratch: Path, n: int) -> Path:
    """The run's test split, topped up from its validation split to `n` examples when it is shorter."""
    from tunesmith.runs.store import find_run

    data = find_run(run).dir / "data"
    rows = [line for name in ("test", "validation") for line in (data / f"{name}.jsonl").read_text().splitlines() if line]
    path = scratch / "test.jsonl"
    path.write_text("\n".join(rows[:n]) + "\n")
    return path


def _compare(run: str, test: Path, args) -> float:
    from tunesmith.evaluate import compare

    started = time.perf_counter()
    compare(test, run=run, strategies=STRATEGIES, probe="none", max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, quiet=True, allow_overlap=True)
    return time.perf_counter() - started


def _plain_loop(run: str, test: Path, args) -> tuple[float, int]:
    """One `model.generate` per example per strategy, on the prompts compare builds."""
    import torch

    from tunesmith.data.render import render_prompt, stop_token_ids
    from tunesmith.evaluate import strategies as S
    from tunesmith.evaluate import workflow as W
    from tunesmith.runs.deliverable import load_run
    from tunesmith.models.load import load_model
    from tunesmith.runs.store import find_run

    info = find_run(run)
    plan = W._plan(test, run=info, out=None, config=None, strategies=STRATEGIES, limit=None, docs=None, system=None,
                   train=None, model=None, allow_overlap=True, probe="none", user_metrics=(), regex=None,
                   json_schema=None, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0, quiet=True)
    cases = W._cases(W._read(plan.data, plan, "test data"), plan)
    ctx = W._context(cases, W._train_examples(plan), plan)
    models = {"base": load_model(W._base_spec(plan), device="cpu"),
              "tuned": load_run(info, device="cpu", merge=True)}
    seconds = 0.0
    for name in STRATEGIES:
        model, tok = models["tuned" if S.uses_tuned(name) else "base"]
        for i, case in enumerate(cases):
            ids = torch.tensor([render_prompt(S.build_prompt(name, case, i, ctx), tok)])
            started = time.perf_counter()
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                               do_sample=False, temperature=None, top_p=None, top_k=None,
                               eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
            seconds += time.perf_counter() - started
    return seconds, len(cases)


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run name or folder (default: a 6-step LoRA run on the FAQ)")
    p.add_argument("--examples", type=int, default=50, help="test examples")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=None, help="compare's generation batch (default: eval.batch_size)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="10 examples, 32 new tokens")
    args = p.parse_args()
    if args.quick:
        args.examples, args.max_new_tokens = 10, 32
    return args


if __name__ == "__main__":
    sys.exit(main())
