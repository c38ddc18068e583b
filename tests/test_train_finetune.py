"""finetune() on the tiny model: pinned losses, exact resume, early stopping, refusals, NaN, disk full."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.errors import RunError, TrainError

from train_helpers import noise_dataset, overrides, sums_dataset


@pytest.fixture
def sums(tmp_path):
    return sums_dataset(tmp_path / "data")


def _run(model_dir, train, val, out, *extra, name=None, on_step=None, loss_fn=None, **train_keys):
    from tunesmith.train.finetune import finetune

    cfg = load_config(None, overrides(model_dir, train, val, out, **train_keys) + list(extra))
    return finetune(cfg, name=name, on_step=on_step, show_progress=False, loss_fn=loss_fn)


def _metrics(run, split="train"):
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == split]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "trainable.safetensors"))


@pytest.mark.parametrize("method, losses, val", [
    # Packed rows (the default) draw LoRA dropout masks over another layout than padded batches,
    # so lora drifts by ~1e-3 from the padded run; with dropout 0 the two agree to 1e-6
    # (test_packing.py::test_finetune_packed_equals_padded_without_dropout).
    ("lora", [10.754766, 10.775331, 10.695774, 10.636514, 10.665896, 10.662844], [10.710702, 10.674233]),
    ("full", [10.754766, 10.642165, 10.467952, 10.35151, 10.310195, 10.293627], [10.385303, 10.280732]),
])
def test_first_losses_are_pinned(tiny_model_dir, sums, tmp_path, store_home, method, losses, val):
    run = _run(tiny_model_dir, *sums, tmp_path / "runs", f"method.name={method}", name=method)
    assert [loss for _, loss in _metrics(run)] == pytest.approx(losses, abs=2e-5)
    assert [loss for _, loss in _metrics(run, "validation")] == pytest.approx(val, abs=2e-5)
    assert run.status == "completed" and run.steps == 6 and run.best_step == 6
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["method"] == method
    assert manifest["best_val_loss"] == pytest.approx(val[-1], abs=2e-5)
    assert {"data_fingerprint", "chat_template_hash", "base_model_sha256", "library_versions"} <= set(manifest)
    final = {p.name for p in run.final.iterdir()}
    expected = {"adapter_config.json", "adapter_model.safetensors"} if method == "lora" else {"config.json", "model.safetensors"}
    assert expected | {"tokenizer.json", "chat_template.jinja"} <= final
    assert (run.dir / "data" / "train.jsonl").is_file() and (run.dir / "config.yaml").is_file()


def test_resume_continues_exactly(tiny_model_dir, sums, tmp_path, store_home):
    from tunesmith.train.finetune import finetune

    keys = dict(max_steps=10, save_every=5, eval_every=5, batch_size=3)
    straight = _run(tiny_model_dir, *sums, tmp_path / "runs", name="straight", **keys)
    stopped = _run(tiny_model_dir, *sums, tmp_path / "runs", name="stopped", on_step=lambda st, m: st.step == 5, **keys)
    assert (stopped.status, stopped.steps, stopped.final) == ("stopped", 5, None)
    resumed = finetune(None, resume="stopped", show_progress=False)
    assert (resumed.name, resumed.status, resumed.steps) == ("stopped", "completed", 10)
    a = _weights(straight.dir / "checkpoints" / "step-10")
    b = _weights(resumed.dir / "checkpoints" / "step-10")
    assert a.keys() == b.keys() and len(a) == 28  # 2 layers x 7 linear layers x (A, B)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert _metrics(resumed) == _metrics(straight)  # the resumed log has each step once
    assert _metrics(resumed, "validation") == _metrics(straight, "validation")


def test_early_stopping_keeps_the_best_step(tiny_model_dir, tmp_path, store_home, capsys):
    from tunesmith.runs.deliverable import load_run
    from tunesmith.train.finetune import finetune

    train, val = noise_dataset(tmp_path / "data")
    cfg = load_config(None, overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=60, eval_every=3,
                                      save_every=100, lr=3e-2, early_stopping_patience=2, batch_size=8)
                      + ["method.name=full"])
    run = finetune(cfg, name="overfit")
    assert (run.stop_reason, run.steps, run.best_step) == ("early_stopping", 15, 9)
    val_losses = dict(_metrics(run, "validation"))
    assert val_losses[12] > val_losses[9] and val_losses[15] > val_losses[9]  # validation rose...
    train_losses = dict(_metrics(run))
    assert train_losses[15] < train_losses[9]  # ...while training loss fell
    assert "overfitting: stopped at step 15, kept step 9" in capsys.readouterr().err
    # The deliverable is step 9's weights, not the last step's.
    model, _ = load_run("overfit")
    best = _weights(run.dir / "checkpoints" / "step-9")
    params = dict(model.named_parameters())
    assert all(float((params[k].detach() - v).abs().max()) == 0 for k, v in best.items())


def test_resume_refuses_changed_data_method_and_corrupt_checkpoint(tiny_model_dir, sums, tmp_path, store_home):
    from tunesmith.train.finetune import finetune

    train, val = sums
    _run(tiny_model_dir, train, val, tmp_path / "runs", name="r", on_step=lambda st, m: st.step == 2,
         max_steps=4, save_every=2)
    with pytest.raises(RunError, match="the method differs .*'lora', now 'full'"):
        finetune(None, overrides=("method.name=full",), resume="r", show_progress=False)
    original = train.read_text()
    train.write_text(original.replace("plus", "and", 1))
    with pytest.raises(RunError, match="cannot resume run 'r': the training data differs"):
        finetune(None, resume="r", show_progress=False)
    train.write_text(original)
    opt = tmp_path / "runs" / "r" / "checkpoints" / "step-2" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-10])
    with pytest.raises(RunError, match="step-2 is corrupt: optimizer.pt does not match its checksum"):
        finetune(None, resume="r", show_progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_model_dir, sums, tmp_path, store_home):
    import torch

    from tunesmith.train.loss import causal_lm_loss

    calls = []

    def poisoned(model, batch):
        calls.append(1)
        loss, n = causal_lm_loss(model, batch)
        return (loss * float("nan"), n) if len(calls) == 3 else (loss, n)

    with pytest.raises(TrainError, match="NaN or infinite at step 3.*last good checkpoint: step 2"):
        _run(tiny_model_dir, *sums, tmp_path / "runs", name="nan", save_every=2, loss_fn=poisoned)
    run_dir = tmp_path / "runs" / "nan"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["status"], manifest["steps"], manifest["stop_reason"]) == ("failed", 2, "non_finite")
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-2"]
    assert not (run_dir / "final").exists()
    assert torch.isfinite(next(iter(_weights(run_dir / "checkpoints" / "step-2").values()))).all()


def test_disk_full_leaves_no_half_checkpoint(tiny_model_dir, sums, tmp_path, store_home, monkeypatch):
    import torch

    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if str(f).endswith("scheduler.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainError, match="disk full while saving checkpoint step-3"):
        _run(tiny_model_dir, *sums, tmp_path / "runs", name="full-disk")
    ckpts = tmp_path / "runs" / "full-disk" / "checkpoints"
    assert list(ckpts.iterdir()) == []  # no step-3, no temp folder
    assert json.loads((tmp_path / "runs" / "full-disk" / "manifest.json").read_text())["status"] == "failed"


def test_gradient_checkpointing_recomputes_and_keeps_the_losses(tiny_model_dir, sums, tmp_path, store_home,
                                                                 monkeypatch):
    from tunesmith.train import methods

    calls = {}
    apply_method = methods.apply_method

    def counting(model, method_cfg):  # count the first layer's MLP calls (the recompute runs the layer's forward)
        key = len(calls)
        calls[key] = 0
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.__setitem__(key, calls[key] + 1))
        return apply_method(model, method_cfg)

    monkeypatch.setattr(methods, "apply_method", counting)
    plain = _run(tiny_model_dir, *sums, tmp_path / "runs", name="plain", max_steps=3)
    saved = _run(tiny_model_dir, *sums, tmp_path / "runs", "train.gradient_checkpointing=true", name="ckpt",
                 max_steps=3)
    assert _metrics(saved) == _metrics(plain)  # same dropout masks in the recompute: the same losses
    assert calls[1] > calls[0]  # the backward pass ran the layer again


def test_fused_kernels_required_without_cuda_refuses_before_the_run_folder(tiny_model_dir, sums, tmp_path, store_home,
                                                                           monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainError, match="train.fused_kernels=true needs a CUDA GPU"):
        _run(tiny_model_dir, *sums, tmp_path / "runs", "train.fused_kernels=true", name="fused")
    assert not (tmp_path / "runs" / "fused").exists()


def test_resume_refuses_changed_training_keys_and_may_extend_the_run(tiny_model_dir, sums, tmp_path, store_home):
    """Issue 12: `--set train.lr=...` on resume silently changed a run; only RESUME_MAY_CHANGE keys may change."""
    from tunesmith.train.finetune import finetune

    _run(tiny_model_dir, *sums, tmp_path / "runs", "serve.api_key=sk-secret-1", name="r",
         on_step=lambda st, m: st.step == 2, max_steps=4, save_every=2)
    run_dir = tmp_path / "runs" / "r"
    assert "sk-secret-1" not in (run_dir / "config.yaml").read_text()  # the saved config keeps no secret
    with pytest.raises(RunError, match=r"cannot resume run 'r': train.lr differs \(run has 0.001, now 0.01\); "
                                       r"data.max_length differs \(run has 1024, now 512\) \(.*only train.epochs, "
                                       r"train.max_steps, .* may change"):
        finetune(None, overrides=("train.lr=0.01", "data.max_length=512"), resume="r", show_progress=False)
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "stopped"  # a refusal changes nothing
    resumed = finetune(None, overrides=("train.max_steps=6",), resume="r", show_progress=False)
    assert (resumed.status, resumed.steps) == ("completed", 6)
    assert load_config(run_dir / "config.yaml").train.max_steps == 6  # the run describes what it became


def test_disk_full_while_writing_final_keeps_the_checkpoints_and_resume_finishes(tiny_model_dir, tmp_path, store_home,
                                                                                  monkeypatch):
    """Issue 12: ENOSPC while saving final/ was a traceback and left the run 'running'. It stopped early, so the
    resume must write final/ from the best step, not train on past the early stop."""
    from tunesmith.train import checkpoint, methods
    from tunesmith.train.finetune import finetune

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    train, val = noise_dataset(tmp_path / "data")
    cfg = load_config(None, overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=60, eval_every=3,
                                      save_every=100, lr=3e-2, early_stopping_patience=2, batch_size=8)
                      + ["method.name=full"])
    with monkeypatch.context() as patched, pytest.raises(
            TrainError, match=r"disk full while writing .*overfit/final: it needs about [\d,.]+ MB, [\d,.]+ MB are free; "
                              r"the checkpoints are intact \(free some space, then `tunesmith train --resume overfit` "
                              r"writes final/"):
        patched.setattr(methods, "save_deliverable", full_disk)
        finetune(cfg, name="overfit", show_progress=False)
    run_dir = tmp_path / "runs" / "overfit"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"].startswith("disk full while writing")
    assert [p.name for p in checkpoint.complete(run_dir / "checkpoints")] == ["step-9", "step-15"]
    for folder in checkpoint.complete(run_dir / "checkpoints"):
        checkpoint.verify(folder)
    assert not (run_dir / "final").exists() and not [p for p in run_dir.iterdir() if p.name.startswith(".final")]
    resumed = finetune(None, resume="overfit", show_progress=False)
    assert (resumed.status, resumed.steps, resumed.best_step, resumed.stop_reason) == ("completed", 15, 9, "early_stopping")
    assert "error" not in json.loads((run_dir / "manifest.json").read_text())
    from safetensors.torch import load_file

    final, best = load_file(str(resumed.final / "model.safetensors")), _weights(run_dir / "checkpoints" / "step-9")
    assert all(float((final[k] - v).abs().max()) == 0 for k, v in best.items() if k in final)
    assert max(step for step, _ in _metrics(resumed)) == 15


def test_a_second_process_cannot_train_a_run_until_the_first_is_killed(tiny_model_dir, sums, tmp_path, store_home):
    """Issue 12: two resumes of one run deleted each other's temp checkpoints. The run's lock refuses the second."""
    import os
    import signal
    import subprocess
    import sys

    from tunesmith.train.finetune import finetune

    _run(tiny_model_dir, *sums, tmp_path / "runs", name="r", on_step=lambda st, m: st.step == 2, max_steps=4, save_every=2)
    run_dir = tmp_path / "runs" / "r"
    writing = run_dir / "checkpoints" / ".step-4.x1y2.tmp"  # the first writer's checkpoint, half-written
    writing.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from tunesmith.runs import layout, lock; "
                               "held = lock.hold(layout.RunPaths(Path(sys.argv[1]))); print('held', flush=True); "
                               "time.sleep(600)", str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunError, match=rf"run 'r' is in use by pid {holder.pid} on .*train.lock"):
            finetune(None, resume="r", show_progress=False)
        cli = subprocess.run([str(Path(sys.executable).parent / "tunesmith"), "train", "--resume", "r"],
                             capture_output=True, text=True, timeout=300)
        assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
        assert f"error: run 'r' is in use by pid {holder.pid}" in cli.stderr and "Traceback" not in cli.stderr
        assert writing.is_dir()  # the refused resumes swept nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases a killed holder's lock
        holder.wait()
    resumed = finetune(None, resume="r", show_progress=False)
    assert (resumed.status, resumed.steps) == ("completed", 4) and not writing.exists()


def test_a_non_finite_validation_loss_is_never_the_best():
    from tunesmith.train.loop import Hooks, LoopArgs, LoopState, _validate

    losses = iter([float("nan"), 2.0, float("inf"), 1.5])
    improved = []
    hooks = Hooks(evaluate=lambda: {"loss": next(losses)}, on_improved=lambda st: improved.append(st.step))
    state, args = LoopState(), LoopArgs(total_steps=4, patience=0)
    for step in range(1, 5):
        state.step = step
        _validate(state, args, hooks)
    assert (state.best_val_loss, state.best_step, improved) == (1.5, 4, [2, 4])
