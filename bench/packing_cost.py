"""The timings behind the packing planner's cost model (packing.ATTENTION_TOKENS, PASS_TOKENS).

    python bench/packing_cost.py          # SmolLM2-135M + LoRA, the machine's threads

Forward + backward of one pass of random-token rows, several (rows x length) shapes, best of 3
after a warm-up; then the least-squares fit seconds ~ a*passes + b*slots + c*sum(row length^2)
and what it means in tokens: PASS_TOKENS ~ a/b, ATTENTION_TOKENS ~ b/c.
"""

from __future__ import annotations

import time

SHAPES = [(1, 128), (4, 128), (1, 256), (2, 256), (4, 256), (1, 512), (2, 512), (1, 1024)]


def main() -> None:
    import numpy as np
    import torch

    from tunesmith.config import MethodConfig
    from tunesmith.data.render import Rendered
    from tunesmith.models.adapters import apply_lora
    from tunesmith.models.load import load_model, local_folder
    from tunesmith.train import packing
    from tunesmith.train.loss import causal_lm_loss

    model, _ = load_model(str(local_folder("smollm2-135m-instruct")))
    torch.manual_seed(0)
    model = apply_lora(model, MethodConfig(r=16, alpha=32, dropout=0.0)).train()

    def example(n: int) -> Rendered:
        return Rendered(torch.randint(100, 40000, (n,)).tolist(), [0] * (n // 2) + [1] * (n - n // 2))

    def best_of_3(rows: int, length: int) -> float:
        batch = packing.collate_packed([[example(length)] for _ in range(rows)], pad_id=0)

        def step() -> float:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss, n = causal_lm_loss(model, batch)
            (loss / n).backward()
            return time.perf_counter() - start

        step()
        return min(step() for _ in range(3))

    print(f"{torch.get_num_threads()} threads")
    rows = []
    for b, t in SHAPES:
        seconds = best_of_3(b, t)
        rows.append((1, b * t, b * t * t, seconds))
        print(f"  {b} row(s) x {t:<5} {seconds:7.3f} s  {1000 * seconds / (b * t):5.2f} ms/token", flush=True)
    x = np.array([r[:3] for r in rows], dtype=float)
    a, b, c = np.linalg.lstsq(x, np.array([r[3] for r in rows]), rcond=None)[0]
    print(f"fit: {a:.3f} s per pass + {1000 * b:.2f} ms per slot + {1e6 * c:.2f} us per length^2"
          f" -> PASS_TOKENS ~ {a / b:.0f}, ATTENTION_TOKENS ~ {b / c:.0f} "
          f"(in use: {packing.PASS_TOKENS}, {packing.ATTENTION_TOKENS})")


if __name__ == "__main__":
    main()
