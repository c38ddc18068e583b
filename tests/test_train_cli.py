"""`tunesmith train` and `tunesmith runs list | show | rm` through the CLI, on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from train_helpers import overrides, sums_dataset

BIN = Path(sys.executable).parent


def _invoke(*args):
    from tunesmith.cli.main import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_train_then_runs_list_show_rm(tiny_model_dir, tmp_path, store_home):
    train, val = sums_dataset(tmp_path / "data")
    sets = [a for kv in overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=2, eval_every=2)
            for a in ("--set", kv)]
    result = _invoke("train", *sets, "--name", "cli-run", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout[result.stdout.index("{"):])
    assert (record["name"], record["status"], record["steps"], record["method"]) == ("cli-run", "completed", 2, "lora")
    assert record["final"].endswith("cli-run/final") and record["summary"]["steps"] == 2

    listed = json.loads(_invoke("runs", "list", "--json").stdout)
    assert [r["name"] for r in listed] == ["cli-run"]
    assert listed[0]["best_val_loss"] == record["best_val_loss"]
    shown = json.loads(_invoke("runs", "show", "cli-run", "--json").stdout)
    assert shown["manifest"]["data_fingerprint"] and shown["dir"] == record["dir"]
    assert "removed run 'cli-run'" in _invoke("runs", "rm", "cli-run", "--yes").stdout
    assert json.loads(_invoke("runs", "list", "--json").stdout) == []
    assert not (tmp_path / "runs" / "cli-run").exists()


def test_a_config_file_with_relative_paths_trains_from_any_folder(tiny_model_dir, tmp_path, store_home, monkeypatch):
    """`tunesmith train some/where/config.yaml` used to find its data only from the folder the paths were relative to."""
    import yaml

    project = tmp_path / "project"
    sums_dataset(project / "data")
    (project / "config.yaml").write_text("data:\n  train: data/train.jsonl\n  validation: data/val.jsonl\n"
                                         "output_dir: runs\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    sets = [a for kv in overrides(tiny_model_dir, Path("unused"), None, Path("unused"), max_steps=2, eval_every=2)
            if not kv.startswith(("data.train=", "output_dir=")) for a in ("--set", kv)]
    result = _invoke("train", "../project/config.yaml", *sets, "--name", "from-elsewhere", "--json")
    assert result.exit_code == 0, result.output
    run_dir = project / "runs" / "from-elsewhere"  # output_dir in the file: beside the file
    assert json.loads(result.stdout[result.stdout.index("{"):])["dir"] == str(run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["train"] == str(project / "data" / "train.jsonl")  # absolute: resume works from anywhere
    assert saved["output_dir"] == str(project / "runs")


def test_user_mistakes_are_one_line_and_exit_2(store_home):
    for args, message in [
        (["train", "--resume", "nope"], "error: unknown run 'nope' (no runs yet"),
        (["runs", "show", "nope"], "error: unknown run 'nope'"),
        (["train", "--set", "train.batch_size=0", "--set", "data.train=x.jsonl"], "train.batch_size must be >= 1"),
    ]:
        done = subprocess.run([str(BIN / "tunesmith"), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr


def test_sigterm_marks_the_run_stopped_not_running(tiny_model_dir, tmp_path, store_home):
    """A scheduler's SIGTERM takes the Ctrl-C path: the manifest says 'stopped' and resume is offered."""
    import os
    import signal
    import time

    train, val = sums_dataset(tmp_path / "data")
    sets = [a for kv in overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=100000, eval_every=1000,
                                  save_every=2) for a in ("--set", kv)]
    proc = subprocess.Popen([str(BIN / "tunesmith"), "train", *sets, "--name", "term-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TUNESMITH_HOME": str(store_home)})
    ckpts = tmp_path / "runs" / "term-run" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.exists() and any(p.name.startswith("step-") for p in ckpts.iterdir())):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    manifest = json.loads((tmp_path / "runs" / "term-run" / "manifest.json").read_text())
    assert manifest["status"] == "stopped"
    assert "tunesmith train --resume term-run" in out
