"""Two processes (DDP over gloo on CPU, through `accelerate launch`) give the losses of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import overrides, sums_dataset

BIN = Path(sys.executable).parent


def _losses(run_dir: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in rows]


@pytest.mark.parametrize("method", ["lora", "dpo"])
def test_two_processes_match_one(tiny_model_dir, tmp_path, store_home, method):
    from test_preference import pairs_files

    train, val = (sums_dataset if method == "lora" else pairs_files)(tmp_path / "data")
    # Dropout off: its masks depend on how many elements each process draws, the one legitimate difference.
    common = overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=4, eval_every=2) + [
        "method.dropout=0", f"method.name={method}"]
    sets = [a for kv in common for a in ("--set", kv)]
    env = {**os.environ, "TUNESMITH_HOME": str(store_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launch = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", str(BIN / "tunesmith"), "train", *sets,
              "--set", "train.batch_size=2", "--name", "two"]
    done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 x 1 accumulation x 2 process(es) = 4 examples per step" in done.stderr
    assert done.stdout.count("run two completed") == 1  # one process reports

    from tunesmith.config import load_config
    from tunesmith.train.finetune import finetune

    one = finetune(load_config(None, common + ["train.batch_size=4"]), name="one", show_progress=False)
    two, ref = _losses(tmp_path / "runs" / "two"), _losses(one.dir)
    assert [r[:2] for r in two] == [r[:2] for r in ref] and len(ref) == 6
    assert [r[2] for r in two] == pytest.approx([r[2] for r in ref], abs=1e-4)
    manifest = json.loads((tmp_path / "runs" / "two" / "manifest.json").read_text())
    assert (manifest["world_size"], manifest["status"]) == (2, "completed")
