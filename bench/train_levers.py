"""One training step, several ways: what each speed lever is worth on its own (figures in bench/RESULTS.md).

    python bench/train_levers.py            # the embedded SmolLM2-135M + LoRA, 8 skewed examples per step
    python bench/train_levers.py --quick    # the tiny test model

Every variant runs forward + backward on the same 8 examples (one optimizer step's worth) with
the same LoRA model, in one process. Time is the median of --repeats runs after one warm-up;
memory is the rise of this process's peak RSS during the variant (the kernel's high-water mark
is reset before each one through /proc/self/clear_refs). The loss of each variant is printed
so a lever that changes the numbers (bf16) shows by how much.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (the same data and tiny model as the main benchmark)


def variants(model, examples, pad_id: int) -> dict:
    """name -> (batch, loss_fn, autocast dtype or None)."""
    import torch

    from tunesmith.train import batching, packing
    from tunesmith.train.loss import plain_loss as default_loss
    from tunesmith.train.loss import causal_lm_loss

    lengths = [len(e.input_ids) for e in examples]
    padded = batching.collate_padded(examples, pad_id)

    def packed(attention_tokens, pass_tokens):
        """The step's examples as packed passes (a list of batches, run one after another)."""
        plan = packing.plan_rows(lengths, tt.MAX_LENGTH, attention_tokens=attention_tokens, pass_tokens=pass_tokens)
        return [packing.collate_packed([[examples[i] for i in row] for row in p.rows], pad_id=pad_id, length=p.length)
                for p in plan.passes]

    return {
        "padded, full logits (like TRL, no checkpointing)": ([padded], default_loss, None),
        "padded, logits at loss positions": ([padded], causal_lm_loss, None),
        "packed fewest slots, full logits": (packed(0, 0), default_loss, None),
        "packed fewest slots, logits at loss positions": (packed(0, 0), causal_lm_loss, None),
        "packed, passes filled to max_length slots": (packed(None, 100_000), causal_lm_loss, None),
        "packed cost-model rows and passes, logits at loss positions (default)": (packed(None, None), causal_lm_loss,
                                                                                   None),
        "default + bf16 autocast": (packed(None, None), causal_lm_loss, torch.bfloat16),
    }


def measure(model, batches, loss_fn, dtype, repeats: int) -> dict:
    import torch

    from tunesmith.train.packing import batch_stats

    real, slots, n_step = (sum(column) for column in zip(*(batch_stats(b) for b in batches)))

    def step():
        model.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:  # gradients accumulate over the passes, normalised by the step's tokens
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss_sum, _ = loss_fn(model, batch)
            (loss_sum / n_step).backward()
            total += float(loss_sum.detach())
        return total / n_step

    step()  # warm-up: first-call allocations and kernel choices
    _reset_peak()
    base = _rss_mb()
    times, loss = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    shape = " + ".join("x".join(map(str, b["input_ids"].shape)) for b in batches)
    return {"seconds": statistics.median(times), "peak_rise_mb": _peak_mb() - base, "loss": loss,
            "passes (rows x len)": shape, "padding_pct": 100 * (1 - real / slots)}


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS:")


def _peak_mb() -> float:
    return _status_mb("VmHWM:")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json")
    a = p.parse_args()
    import torch

    from tunesmith.config import MethodConfig
    from tunesmith.data.render import render
    from tunesmith.models.adapters import apply_lora
    from tunesmith.models.load import load_model, local_folder

    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        files = tt.build_data(Path(tmp) / "data", n_faq=6, n_long=2, max_turns=8, seed=42)
        folder = tt.tiny_model(Path(tmp) / "tiny") if a.quick else local_folder("smollm2-135m-instruct")
        model, tok = load_model(str(folder))
        rows = [json.loads(line) for line in files["ts_train"].read_text().splitlines()]
    torch.manual_seed(0)
    model = apply_lora(model, MethodConfig(r=16, alpha=32, dropout=0.0)).train()  # dropout 0: losses comparable across layouts
    examples = [render(r["messages"], tok, max_length=tt.MAX_LENGTH) for r in rows]
    print(f"{len(examples)} examples, lengths {[len(e.input_ids) for e in examples]}, "
          f"{torch.get_num_threads()} threads", flush=True)
    results = {}
    for name, (batches, loss_fn, dtype) in variants(model, examples, tok.pad_token_id).items():
        r = measure(model, batches, loss_fn, dtype, a.repeats)
        results[name] = r
        print(f"  {name:<70} {r['seconds']:6.2f} s  +{r['peak_rise_mb']:6.0f} MB  loss {r['loss']:.5f}  "
              f"passes {r['passes (rows x len)']}  padding {r['padding_pct']:.1f}%", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
