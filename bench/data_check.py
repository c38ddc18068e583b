"""Benchmark `data check` on a generated 1,000,000-row file: rows/s and peak RSS (structural + duplicate checks).

    .venv/bin/python bench/data_check.py            # 1,000,000 rows
    .venv/bin/python bench/data_check.py --rows 100000

The file has 2% exact duplicates, 2% near duplicates, 1% conflicting answers and 0.5% broken
rows, so every detector does real work. Target: >= 20,000 rows/s, memory bounded (no row list).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("permit building municipality plan drawing extension facade roof garage fee weeks approval "
         "inspection control contract insurance energy tax deduction radon moisture foundation window "
         "kitchen bathroom heating ventilation fire safety accessibility zoning boundary neighbour").split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    made: list[tuple[str, str]] = []
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            r = rng.random()
            if r < 0.005:
                f.write('{"input": "broken row", "output": \n')
                continue
            if made and r < 0.025:  # exact duplicate
                q, a = made[rng.randrange(len(made))]
            elif made and r < 0.045:  # near duplicate: one extra word in the answer
                q, a = made[rng.randrange(len(made))]
                a = a + " " + rng.choice(WORDS)
            elif made and r < 0.055:  # conflict: same question, another answer
                q, _ = made[rng.randrange(len(made))]
                a = f"answer {i}: " + " ".join(rng.choices(WORDS, k=25))
            else:
                q = f"question {i}: " + " ".join(rng.choices(WORDS, k=10)) + "?"
                a = f"answer {i}: " + " ".join(rng.choices(WORDS, k=30)) + "."
                if len(made) < 10000:
                    made.append((q, a))
            f.write(json.dumps({"input": q, "output": a}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the generated file here and keep it")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tunesmith.data.check import CheckOptions, check

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "bench.jsonl"
        t0 = time.perf_counter()
        generate(path, args.rows)
        print(f"generated {args.rows:,} rows ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start, cpu_start = time.perf_counter(), time.process_time()
        report = check(path, CheckOptions())
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    s = report.summary
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"checked {s['rows_read']:,} rows in {seconds:.1f} s: {s['rows_read'] / seconds:,.0f} rows/s "
          f"(target >= 20,000); CPU time {cpu:.1f} s = {s['rows_read'] / cpu:,.0f} rows per CPU-second "
          f"(wall and CPU differ when other processes share the cores; load average {os.getloadavg()[0]:.1f})")
    print(f"peak RSS {peak:.0f} MB (before the check: {rss_before:.0f} MB)")
    print(f"found: {s['rows_with_errors']:,} rows with errors, {s['exact_duplicates']:,} exact duplicates, "
          f"{s['near_duplicates']:,} near duplicates, {s['conflicts']:,} conflicts; verdict {s['verdict']['level']}")


if __name__ == "__main__":
    main()
