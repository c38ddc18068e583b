"""A whole epoch of the default training steps, timed step by step: the thread and torch.compile levers.

    python bench/train_steps.py --threads 2
    python bench/train_steps.py --threads 1
    python bench/train_steps.py --compile      # the decoder compiled in place (dynamic shapes)

SmolLM2-135M + LoRA (dropout 0) on train_throughput.py's data (40 FAQ rows + 8 long
conversations, 6 steps of 8), each step's packed passes exactly as `tunesmith train` builds
them on a CPU; forward + backward only (no optimizer), so only the levers differ. Prints each
step's seconds and the trained tokens/s over steps 2..n (the first holds warm-up and compiling).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (the same data as the main benchmark)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int)
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()
    import torch

    from tunesmith.config import MethodConfig
    from tunesmith.data.render import render
    from tunesmith.models.adapters import apply_lora
    from tunesmith.models.load import load_model, local_folder
    from tunesmith.train import batching, packing
    from tunesmith.train.loss import _causal_lm, causal_lm_loss

    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = tt.build_data(Path(tmp), n_faq=40, n_long=8, max_turns=8, seed=42)
        rows = [json.loads(line) for line in files["ts_train"].read_text().splitlines()]
    model, tok = load_model(str(local_folder("smollm2-135m-instruct")))
    torch.manual_seed(0)
    model = apply_lora(model, MethodConfig(r=16, alpha=32, dropout=0.0)).train()
    if a.compile:
        _causal_lm(model).get_decoder().compile(dynamic=True)  # in place: causal_lm_loss calls the decoder
    examples = [render(r["messages"], tok, max_length=tt.MAX_LENGTH) for r in rows]
    plan = batching.StepPlan(len(examples), tt.BATCH)
    collate = lambda e: packing.packed_micro_batches(e, max_length=tt.MAX_LENGTH, pad_id=tok.pad_token_id)  # noqa: E731
    steps = list(batching.step_batches(examples, plan, seed=0, start_step=0, total_steps=plan.steps_per_epoch,
                                       collate=collate, group_by_length=False))
    times, trained = [], []
    for step in steps:
        start = time.perf_counter()
        for batch in step.micro:
            loss, _ = causal_lm_loss(model, batch)
            (loss / step.n_loss_tokens).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        trained.append(step.n_loss_tokens)
        print(f"  step {len(times)}: {times[-1]:.1f} s", flush=True)
    label = "compiled" if a.compile else "eager"
    print(f"{label}, {torch.get_num_threads()} threads: first step {times[0]:.1f} s, total {sum(times):.1f} s, "
          f"steps 2..{len(times)}: {sum(trained[1:]) / sum(times[1:]):.1f} trained tokens/s")


if __name__ == "__main__":
    main()
