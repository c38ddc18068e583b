"""Smoke run of the DPO benchmark: both sides train the tiny model on pairs and the RESULT line parses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "dpo_throughput.py"
RESULT = re.compile(r"RESULT first_loss_delta=(\S+) tokens_per_s_ratio=(\S+) peak_rss_ratio=(\S+) final_loss_delta=(\S+)")


def test_quick_dpo_bench_prints_the_result_line(store_home):
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = RESULT.fullmatch(last)
    assert match, last
    first, speed, rss, delta = map(float, match.groups())
    assert first < 1e-3  # policy == reference at step 0 on both sides: log 2
    assert speed > 0 and rss > 0
    assert abs(delta) < 5.0  # same pairs, same steps, same loss: close, though the batch orders differ
    assert "trl#1" in done.stdout and "tunesmith#1" in done.stdout
    # TRL's own code on the tokens tunesmith trains gives tunesmith's step-0 log-probabilities
    check = re.search(r"max \|TRL - tunesmith\| (\S+)", done.stdout)
    assert check and float(check.group(1)) < 1e-3, done.stdout
