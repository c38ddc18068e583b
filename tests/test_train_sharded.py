"""FSDP2 and DeepSpeed ZeRO-2/3 train, checkpoint, resume and write final/ as one process does (issue 15).

Two CPU processes over gloo, launched by `accelerate launch` with the shipped configs in
examples/accelerate/ (mixed precision off: CPU). accelerate shards only on GPUs, so the training
script is tests/sharded_cpu.py, which flips accelerate's state to the sharded type the launch asked
for (its docstring says why that is the whole difference); without it the same launch is refused in
one line (the last tests here). Dropout is off: its masks depend on how many elements each process
draws, the one legitimate difference from one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import overrides, sums_dataset

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "accelerate"
SCRIPT = Path(__file__).resolve().parent / "sharded_cpu.py"

pytest.importorskip("torch.distributed.fsdp")


def _env(store_home: Path) -> dict:
    return {**os.environ, "TUNESMITH_HOME": str(store_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu"}


def _launch(config: str, args: list[str], env: dict, *, script: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / config), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", "0",
           *(script if script is not None else [str(SCRIPT)]), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _sets(keys: list[str]) -> list[str]:
    return [a for kv in keys for a in ("--set", kv)]


def _losses(run_dir: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"]) for r in rows if r["split"] in ("train", "validation")]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture
def sums(tiny_model_dir, tmp_path):
    train, val = sums_dataset(tmp_path / "data")
    return overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=4, eval_every=2, save_every=2) + [
        "method.dropout=0"]


def _one_process(common: list[str], name: str, *extra: str):
    from tunesmith.config import load_config
    from tunesmith.train.finetune import finetune

    return finetune(load_config(None, common + ["train.batch_size=4", *extra]), name=name, show_progress=False)


def test_fsdp_matches_one_process_and_resumes_exactly(sums, tmp_path, store_home, tiny_model_dir):
    env, runs = _env(store_home), tmp_path / "runs"
    two = _launch("fsdp.yaml", ["train", *_sets(sums), "--set", "train.batch_size=2", "--name", "two"], env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 x 1 accumulation x 2 process(es) = 4 examples per step" in two.stderr
    manifest = json.loads((runs / "two" / "manifest.json").read_text())
    assert manifest["distributed"] == {"type": "FSDP", "processes": 2, "fsdp_version": 2}
    assert (manifest["world_size"], manifest["status"]) == (2, "completed")
    # every process wrote its own shard of the optimizer's state
    shards = sorted(p.name for p in (runs / "two" / "checkpoints" / "step-4" / "sharded").rglob("*.distcp"))
    assert any(n.startswith("__0_") for n in shards) and any(n.startswith("__1_") for n in shards), shards
    assert not list((runs / "two" / "checkpoints").glob(".*"))  # no staging folder left behind

    one = _one_process(sums, "one")
    assert [r[:2] for r in _losses(runs / "two")] == [r[:2] for r in _losses(one.dir)]
    assert [r[2] for r in _losses(runs / "two")] == pytest.approx([r[2] for r in _losses(one.dir)], abs=1e-4)
    final, ref = _weights(runs / "two" / "final" / "adapter_model.safetensors"), _weights(one.final / "adapter_model.safetensors")
    assert _max_diff(final, ref) < 1e-4

    # killed right after checkpoint step-2 (every process), then resumed: the uninterrupted run's weights
    cut = _launch("fsdp.yaml", ["--exit-after-checkpoint", "2", "train", *_sets(sums), "--set", "train.batch_size=2",
                                "--name", "cut"], env)
    assert cut.returncode != 0 and not (runs / "cut" / "final").exists()
    resumed = _launch("fsdp.yaml", ["train", "--resume", "cut"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _max_diff(_weights(runs / "cut" / "final" / "adapter_model.safetensors"), final) < 1e-6
    assert _losses(runs / "cut") == _losses(runs / "two")

    # final/ is a plain peft adapter: loaded onto the base by peft alone, it gives the one-process model's logits
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    logits = [PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(d)).eval()(ids).logits
              for d in (runs / "two" / "final", one.final)]
    assert torch.allclose(logits[0], logits[1], atol=1e-4)


def test_fsdp_full_fine_tuning_writes_a_whole_model(sums, tmp_path, store_home):
    env, runs = _env(store_home), tmp_path / "runs"
    full = sums + ["method.name=full", "train.lr=1e-4"]
    two = _launch("fsdp.yaml", ["train", *_sets(full), "--set", "train.batch_size=2", "--name", "two"], env)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _one_process(full, "one")
    assert [r[2] for r in _losses(runs / "two")] == pytest.approx([r[2] for r in _losses(one.dir)], abs=1e-4)

    import torch
    from transformers import AutoModelForCausalLM

    models = [AutoModelForCausalLM.from_pretrained(str(d)) for d in (runs / "two" / "final", one.final)]
    a, b = (dict(m.named_parameters()) for m in models)
    assert sorted(a) == sorted(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    assert torch.allclose(models[0](ids).logits, models[1](ids).logits, atol=1e-4)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_accumulates_and_resumes_as_one_process(stage, sums, tmp_path, store_home):
    pytest.importorskip("deepspeed")
    env, runs = _env(store_home), tmp_path / "runs"
    # 1 example x 2 accumulation x 2 processes = the one-process batch of 4: DeepSpeed must step once a step,
    # not once a micro-batch (it did before: accelerate's no_sync does not reach ZeRO-2/3)
    keys = ["train", *_sets(sums), "--set", "train.batch_size=1", "--set", "train.grad_accum=2", "--name", "cut"]
    cut = _launch(f"deepspeed_zero{stage}.yaml", ["--exit-after-checkpoint", "2", *keys], env)
    assert cut.returncode != 0 and (runs / "cut" / "checkpoints" / "step-2" / "sharded").is_dir(), cut.stderr[-3000:]
    optim = sorted(p.name for p in (runs / "cut" / "checkpoints" / "step-2" / "sharded").rglob("*optim_states.pt"))
    assert len(optim) == 2, optim  # one ZeRO shard of the optimizer per process
    resumed = _launch(f"deepspeed_zero{stage}.yaml", ["train", "--resume", "cut"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    manifest = json.loads((runs / "cut" / "manifest.json").read_text())
    assert manifest["distributed"] == {"type": "DEEPSPEED", "processes": 2, "zero_stage": stage}

    one = _one_process(sums, "one")
    assert [r[:2] for r in _losses(runs / "cut")] == [r[:2] for r in _losses(one.dir)]
    assert [r[2] for r in _losses(runs / "cut")] == pytest.approx([r[2] for r in _losses(one.dir)], abs=1e-4)
    final = _weights(runs / "cut" / "final" / "adapter_model.safetensors")
    assert _max_diff(final, _weights(one.final / "adapter_model.safetensors")) < 1e-4


# ------------------------------------------------------------------ launches that cannot run as asked


@pytest.mark.parametrize("config, extra, says", [
    ("fsdp.yaml", [], "this launch asks for FSDP, but accelerate"),
    ("deepspeed_zero2.yaml", [], "this launch asks for DeepSpeed, but accelerate"),
    ("ddp.yaml", ["--cpu"], "this launch asked for several processes, but accelerate started only this one"),
])
def test_a_launch_that_cannot_run_as_asked_says_so_once(config, extra, says, sums, store_home, tmp_path):
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    done = subprocess.run(
        [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / config), "--num_processes", "2",
         "--mixed_precision", "no", "--main_process_port", "0", *extra, str(BIN / "tunesmith"), "train", *_sets(sums)],
        env=_env(store_home), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    # one line, from the main process (accelerate's launcher may quote it again in its own traceback)
    said = [line for line in done.stderr.splitlines() if line.startswith("error: ") and says in line]
    assert len(said) == 1, done.stderr[-3000:]
    assert "tunesmith/train" not in done.stderr  # no traceback through tunesmith (accelerate's launcher may add its own)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # and no run was started


# ------------------------------------------------------------------ the parts, in one process


class _Plugin:
    def __init__(self, ds: dict, stage: int):
        self.deepspeed_config, self.zero_stage = ds, stage


class _State:
    def __init__(self, plugin):
        self.deepspeed_plugin = plugin


class _Acc:
    distributed_type = "DistributedType.DEEPSPEED"
    num_processes = 2

    def __init__(self, ds: dict, stage: int = 2):
        self.state = _State(_Plugin(ds, stage))


def _cfg(**train):
    from tunesmith.config import load_config

    return load_config(None, ["data.train=x.jsonl", *(f"train.{k}={v}" for k, v in train.items())])


def test_deepspeed_fields_come_from_the_run_config():
    from tunesmith.train import distributed

    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
          "zero_optimization": {"stage": 3}}
    distributed.configure(_Acc(ds, stage=3), _cfg(batch_size=3, max_grad_norm=0.5))
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["train_batch_size"] == 6
    assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    kept = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0}
    distributed.configure(_Acc(kept), _cfg(batch_size=8))
    assert kept["train_micro_batch_size_per_gpu"] == 2  # a value the user set is theirs


def test_deepspeed_accumulation_and_time_budget_are_refused_in_one_line():
    from tunesmith.errors import LaunchError
    from tunesmith.train import distributed

    with pytest.raises(LaunchError, match="gradient_accumulation_steps: 4; tunesmith accumulates itself.*grad_accum=4"):
        distributed.configure(_Acc({"gradient_accumulation_steps": 4}), _cfg())
    with pytest.raises(LaunchError, match="time_budget cannot be planned under DeepSpeed"):
        distributed.configure(_Acc({}), _cfg(time_budget="5m"))


def test_a_sharded_checkpoint_resumes_only_under_its_launch():
    from tunesmith.errors import RunError
    from tunesmith.train import distributed

    class One:
        distributed_type, num_processes = "DistributedType.NO", 1

    fsdp = {"type": "FSDP", "processes": 2, "fsdp_version": 2}
    with pytest.raises(RunError, match="cannot resume run 'r' as one process: its checkpoints were written under "
                                       "FSDP over 2 process"):
        distributed.check_resume(One(), fsdp, True, "r")
    distributed.check_resume(One(), {"type": "MULTI_CPU", "processes": 2}, False, "r")  # DDP's state is whole
    with pytest.raises(RunError, match="as DEEPSPEED over 2 process.*do not hold"):
        distributed.check_resume(_Acc({}), {"type": "NO", "processes": 1}, False, "r")


def test_a_sharded_checkpoint_is_checksummed_file_by_file(tmp_path):
    from tunesmith.errors import RunError
    from tunesmith.train import checkpoint

    root = tmp_path / "checkpoints"
    shards = checkpoint.staging(root, 3)
    (shards / "optimizer_0").mkdir(parents=True)
    for rank in (0, 1):
        (shards / "optimizer_0" / f"__{rank}_0.distcp").write_bytes(bytes([rank]) * 64)
    import torch

    folder = checkpoint.save(root / "step-3", weights={"w": torch.ones(2)}, optimizer_state=None, scheduler_state={},
                             rng_states=[checkpoint.rng_state()], loop_state={"step": 3}, shards=shards)
    assert not shards.exists() and not (folder / "optimizer.pt").exists()
    files = json.loads((folder / checkpoint.MANIFEST).read_text())["files"]
    assert "sharded/optimizer_0/__1_0.distcp" in files
    saved = checkpoint.load(folder)
    assert saved["sharded"] == folder / "sharded" and saved["optimizer"] is None
    (folder / "sharded" / "optimizer_0" / "__1_0.distcp").write_bytes(b"\0" * 64)  # one process's shard damaged
    with pytest.raises(RunError, match="sharded/optimizer_0/__1_0.distcp does not match its checksum"):
        checkpoint.load(folder)
