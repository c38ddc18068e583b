"""Crash-safe training (issue 8, part 2): SIGKILL `tunesmith train` at seeded points, resume until done.

The test runs this file as the training process: `python test_crash_safe_training.py SPEC MARKER
train ...` installs one pause point (SPEC), then runs the real CLI. When training reaches the
point it writes MARKER and sleeps; the test then kills it with SIGKILL, so every kill lands at a
known place instead of wherever a timer happened to fire:

    file:N:NAME   inside checkpoint step-N's writer, just after NAME was written (a half-written temp folder)
    rename:N:     checkpoint step-N fully written and checksummed, just before its temp folder is renamed
    step:N:       inside optimizer step N, after forward and backward, before the weights change

Which file and which step are drawn from a seeded RNG (TUNESMITH_CRASH_SEED, default 0).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

SEED = int(os.environ.get("TUNESMITH_CRASH_SEED", "0"))
KEYS = dict(max_steps=6, batch_size=4, eval_every=2, save_every=2, keep_checkpoints=2)
TORCH_FILES = ["trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"]
PAUSE_LIMIT_S = 240  # a loaded 2-core machine takes ~12 s to start a training process


# ------------------------------------------------------------------ the training process (run as a script)


def _pause(marker: Path, why: str, replace=os.replace) -> None:
    """Tell the test where we are, then wait to be killed."""
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(why)
    replace(tmp, marker)
    time.sleep(600)
    os._exit(3)  # the test kills us long before this


def _install(spec: str, marker: Path) -> None:
    kind, step, name = spec.split(":")
    n = int(step)
    {"file": _pause_after_file, "rename": _pause_before_rename, "step": _pause_in_step}[kind](n, name, marker)


def _in_temp_checkpoint(path, n: int, name: str) -> bool:
    p = Path(path)
    return p.name == name and p.parent.name.startswith(f".step-{n}.") and p.parent.name.endswith(".tmp")


def _pause_after_file(n: int, name: str, marker: Path) -> None:
    import safetensors.torch
    import torch

    def wrap(real):
        def write(obj, path, *a, **k):
            real(obj, path, *a, **k)
            if _in_temp_checkpoint(path, n, name):
                _pause(marker, f"file:{n}:{name}")
        return write

    torch.save = wrap(torch.save)
    safetensors.torch.save_file = wrap(safetensors.torch.save_file)


def _pause_before_rename(n: int, _name: str, marker: Path) -> None:
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(src).name.startswith(f".step-{n}.") and Path(dst).name == f"step-{n}":
            _pause(marker, f"rename:{n}", real)
        return real(src, dst, *a, **k)

    os.replace = replace


def _pause_in_step(n: int, _name: str, marker: Path) -> None:
    import importlib

    finetune = importlib.import_module("tunesmith.train.finetune")  # the package exports a function of that name
    loop = importlib.import_module("tunesmith.train.loop")
    real_loop, real_step, seen = finetune.train_loop, loop._one_step, {}

    def train_loop(*a, **k):
        seen["state"] = a[6]  # train_loop(model, optimizer, scheduler, accelerator, steps, args, state, ...)
        return real_loop(*a, **k)

    def one_step(*a, **k):
        loss = real_step(*a, **k)
        if seen["state"].step + 1 == n:  # gradients of step n computed, not yet applied
            _pause(marker, f"step:{n}")
        return loss

    finetune.train_loop, loop._one_step = train_loop, one_step


def _main(argv: list[str]) -> None:
    spec, marker, *cli = argv
    if spec != "none":
        _install(spec, Path(marker))
    sys.argv = ["tunesmith", *cli]
    from tunesmith.cli.main import run

    run()


if __name__ == "__main__":
    _main(sys.argv[1:])


# ------------------------------------------------------------------ the test

import pytest  # noqa: E402

from train_helpers import overrides, sums_dataset  # noqa: E402


def _train_until(spec: str, cli: list[str], workdir: Path, env: dict) -> subprocess.CompletedProcess | str:
    """Start the CLI with a pause point; SIGKILL it there. Returns where it paused, or the finished process."""
    marker = workdir / f"paused-{time.monotonic_ns()}"
    log = marker.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, __file__, spec, str(marker), *cli], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=workdir)
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while proc.poll() is None and not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if marker.exists():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            return marker.read_text()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"training never reached {spec} within {PAUSE_LIMIT_S} s:\n{log.read_text()[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")


def _checkpoints(run_dir: Path) -> tuple[list[str], list[str]]:
    """(complete checkpoint folders, leftover temp folders) under checkpoints/."""
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    return [n for n in names if n.startswith("step-")], [n for n in names if n.startswith(".")]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _metrics(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in rows]


def _flip_bytes(path: Path, rng: random.Random) -> bytes:
    """XOR 8 bytes in the middle of the file; returns the original contents."""
    original = path.read_bytes()
    data = bytearray(original)
    at = rng.randrange(len(data) // 4, len(data) // 2)
    for i in range(at, min(at + 8, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return original


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_weights(tiny_model_dir, tmp_path, store_home):
    from tunesmith.config import load_config
    from tunesmith.errors import RunError
    from tunesmith.train import checkpoint
    from tunesmith.train.finetune import finetune

    rng = random.Random(SEED)
    train, val = sums_dataset(tmp_path / "data")
    runs = tmp_path / "runs"
    sets = overrides(tiny_model_dir, train, val, runs, **KEYS)
    env = {**os.environ, "TUNESMITH_HOME": str(store_home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # the training process imports the tunesmith this test imports (a worktree's src/ on PYTHONPATH too)
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    straight = finetune(load_config(None, sets), name="straight", show_progress=False)
    run_dir = runs / "crash"
    resume = ["train", "--resume", str(run_dir)]

    # 1. killed while writing checkpoint step-4: its temp folder is half-written and never taken as the latest
    half = rng.choice(TORCH_FILES)
    first = ["train", *[a for s in sets for a in ("--set", s)], "--name", "crash"]
    assert _train_until(f"file:4:{half}", first, tmp_path, env) == f"file:4:{half}"
    done, temps = _checkpoints(run_dir)
    assert done == ["step-2"] and len(temps) == 1 and temps[0].startswith(".step-4.")
    assert (run_dir / "checkpoints" / temps[0] / half).is_file()
    assert not (run_dir / "checkpoints" / temps[0] / checkpoint.MANIFEST).exists()
    assert checkpoint.latest(run_dir / "checkpoints").name == "step-2"
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"

    # 2. a corrupted checkpoint file is detected on resume, named, and nothing is changed
    bad = rng.choice(checkpoint.FILES)
    target = run_dir / "checkpoints" / "step-2" / bad
    original = _flip_bytes(target, rng)
    with pytest.raises(RunError, match=f"checkpoint .*step-2 is corrupt: {bad} does not match its checksum") as e:
        finetune(None, resume=str(run_dir), show_progress=False)
    assert "delete" in e.value.hint and "step-2" in e.value.hint
    target.write_bytes(original)

    # 3. killed inside a step (gradients computed, weights not yet updated)
    k = rng.randint(3, 5)
    assert _train_until(f"step:{k}:", resume, tmp_path, env) == f"step:{k}"
    done, temps = _checkpoints(run_dir)
    assert done[-1] == f"step-{2 * ((k - 1) // 2)}" and temps == []  # the resume swept the stale temp folder

    # 4. killed with step-6 complete and checksummed but not yet renamed: still not the latest
    assert _train_until("rename:6:", resume, tmp_path, env) == "rename:6"
    done, temps = _checkpoints(run_dir)
    assert done[-1] == "step-4" and len(temps) == 1
    assert (run_dir / "checkpoints" / temps[0] / checkpoint.MANIFEST).is_file()
    assert checkpoint.latest(run_dir / "checkpoints").name == "step-4"

    # 5. resume to the end (with the leftover of a kill while final/ was written: swept too)
    leftover = run_dir / ".final.kill9.tmp"
    leftover.mkdir()
    (leftover / "adapter_model.safetensors").write_bytes(b"half")
    finished = _train_until("none", resume, tmp_path, env)
    assert finished.returncode == 0, finished.stdout[-3000:]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    assert _checkpoints(run_dir) == (["step-4", "step-6"], [])
    assert _max_diff(_weights(run_dir / "checkpoints" / "step-6" / "trainable.safetensors"),
                     _weights(straight.dir / "checkpoints" / "step-6" / "trainable.safetensors")) <= 1e-6
    assert _max_diff(_weights(run_dir / "final" / "adapter_model.safetensors"),
                     _weights(straight.final / "adapter_model.safetensors")) <= 1e-6
    assert _metrics(run_dir) == _metrics(straight.dir)  # every step logged once, same losses


def test_a_kill_while_rotating_leaves_no_step_folder_with_missing_files(tmp_path, monkeypatch):
    from tunesmith.train import checkpoint

    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        folder = root / f"step-{step}"
        folder.mkdir(parents=True)
        for name in (*checkpoint.FILES, checkpoint.MANIFEST):
            (folder / name).write_text(name)

    def killed_midway(path, ignore_errors=False):  # removes one file, then the process "dies"
        victims = sorted(Path(path).iterdir()) if Path(path).is_dir() else []
        if victims:
            victims[-1].unlink()  # trainer_state.json goes, checkpoint.json stays
            raise SystemExit("killed")

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(SystemExit):
        checkpoint.rotate(root, keep=2, protect=set())
    assert [p.name for p in checkpoint.complete(root)] == ["step-4", "step-6"]
    for folder in checkpoint.complete(root):
        assert sorted(p.name for p in folder.iterdir()) == sorted((*checkpoint.FILES, checkpoint.MANIFEST))
    monkeypatch.undo()
    assert [p.name for p in checkpoint.sweep(root)] == [".step-2.deleting.tmp"]
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-6"]
