"""Where a tunesmith DPO step's time goes: one step of 8 FAQ pairs, laid out three ways, timed in pieces.

    python bench/dpo_step_pieces.py [--threads 2] [--repeats 2] [--profile]

Layouts, all through tunesmith's own collate and log-prob code (train/preference.py), on
SmolLM2-135M-Instruct + LoRA (r 16, all-linear), fp32:
  packed   the training default: pairs packed several to a row, prompt once, a 4D block mask
  shared   one pair a row (prompt once, 4D block mask), padded to the longest pair: the
           reference pass's layout
  plain    two rows a pair (prompt | chosen, prompt | rejected), 2D padding mask: TRL's layout
Printed per layout: rows x length, slots, forward (with grad), backward, and a no-grad forward
(what the reference pass pays; also with the LoRA adapter disabled, which gives the same numbers
at step 0 since B = 0), the fastest of --repeats. --profile adds torch.profiler's top
operators of one packed forward + backward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_throughput import BATCH, LORA, MAX_LENGTH, build_data, canonical, read_pairs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--layouts", help="comma-separated subset of packed,shared,plain (default all)")
    a = p.parse_args()
    import tempfile

    import torch

    from tunesmith.config import MethodConfig
    from tunesmith.data.render import render_pair
    from tunesmith.models.load import load_model
    from tunesmith.train import packing, preference
    from tunesmith.train.methods import apply_method

    torch.set_num_threads(a.threads)
    model, tokenizer = load_model("smollm2-135m-instruct", dtype="float32")
    model = apply_method(model, MethodConfig(name="dpo", weights="lora", r=LORA["r"], alpha=LORA["alpha"],
                                             dropout=0.0, target_modules=LORA["target_modules"]))
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        files = build_data(Path(tmp), n_pairs=BATCH, seed=42)
        examples = [canonical(x) for x in read_pairs(str(files["train"]))]
    pairs = [render_pair(e, tokenizer, max_length=MAX_LENGTH) for e in examples]
    for pair in pairs:
        pair.ref = (0.0, 0.0)
    pad = tokenizer.pad_token_id
    dtype = packing.mask_dtype(model)
    layout = preference.shared_layout(model)
    plan = packing.plan_rows([len(x.input_ids) for x in pairs], 2 * MAX_LENGTH,
                             **packing.device_costs("cpu"))
    layouts = {
        "packed": [preference.collate_pairs([[pairs[i] for i in row] for row in ps.rows], pad_id=pad, dtype=dtype,
                                            layout=layout) for ps in plan.passes],
        "shared": [preference.collate_pairs([[x] for x in pairs], pad_id=pad, dtype=dtype, layout=layout)],
        "plain": [preference.collate_pairs([[x] for x in pairs], pad_id=pad, dtype=dtype, shared=False)],
    }
    useful = sum(len(x.input_ids) for x in pairs)
    print(f"8 pairs, {useful} useful tokens (prompt once), {a.threads} threads, fastest of {a.repeats}")
    print(f"  {'layout':<8} {'passes':>6} {'rows x T':>12} {'slots':>6} {'fwd s':>6} {'bwd s':>6} {'nograd s':>8} {'no LoRA s':>9}")
    obj = preference.Objective("dpo")
    for name, batches in layouts.items():
        if a.layouts and name not in a.layouts.split(","):
            continue
        fwd, bwd, nograd, bare = ([] for _ in range(4))
        for _ in range(a.repeats):
            f = b = n = m = 0.0
            for batch in batches:
                start = time.perf_counter()
                logps, counts = preference.pair_logps(model, batch)
                loss = preference.loss_terms(obj, logps, counts, batch["ref"])[0].sum()
                f += time.perf_counter() - start
                start = time.perf_counter()
                loss.backward()
                b += time.perf_counter() - start
                start = time.perf_counter()
                with torch.no_grad():
                    preference.pair_logps(model, batch)
                n += time.perf_counter() - start
                start = time.perf_counter()
                with torch.no_grad(), model.disable_adapter():
                    preference.pair_logps(model, batch)
                m += time.perf_counter() - start
            model.zero_grad(set_to_none=True)
            fwd.append(f), bwd.append(b), nograd.append(n), bare.append(m)
        shapes = "+".join(f"{x['input_ids'].shape[0]}x{x['input_ids'].shape[1]}" for x in batches)
        slots = sum(x["input_ids"].numel() for x in batches)
        print(f"  {name:<8} {len(batches):>6} {shapes:>12} {slots:>6} {min(fwd):>6.2f} {min(bwd):>6.2f} "
              f"{min(nograd):>8.2f} {min(bare):>9.2f}", flush=True)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in layouts["packed"]:
                logps, counts = preference.pair_logps(model, batch)
                preference.loss_terms(obj, logps, counts, batch["ref"])[0].sum().backward()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=40))


if __name__ == "__main__":
    main()
