"""Smoke run of the training benchmark: both sides train the tiny model and the RESULT line parses."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_throughput.py"
RESULT = re.compile(r"RESULT tokens_per_s_ratio=(\S+) peak_rss_ratio=(\S+) peak_gpu_ratio=(\S+) "
                    r"padding_waste=(\S+) loss_delta=(\S+) mfu=(\S+)/(\S+)")


def test_quick_bench_prints_the_result_line(store_home):
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = RESULT.fullmatch(last)
    assert match, last
    speed, rss, gpu, waste, delta, mfu, mfu_trl = map(float, match.groups())
    assert speed > 0 and rss > 0
    assert math.isnan(gpu)  # no CUDA here
    assert 0 < mfu < 100 and 0 < mfu_trl < 100  # of a measured CPU matmul
    assert 0.0 <= waste <= 2.0  # the target; padded batches of these lengths waste ~50%
    assert abs(delta) < 1.0  # same examples, same steps: the same loss within 1%
    assert "trl#1" in done.stdout and "tunesmith#1" in done.stdout
