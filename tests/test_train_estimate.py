"""The plan line's estimate (issue 15): memory by part, sharding, the device it names, auto gradient checkpointing."""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import pytest

from tunesmith.config import load_config
from tunesmith.data.render import Rendered
from tunesmith.train import progress
from tunesmith.train.batching import StepPlan
from tunesmith.train.loss import CHUNK
from tunesmith.train.progress import Machine

from train_helpers import overrides, sums_dataset

VOCAB = 49152
CPU = Machine("cpu", "CPU (2 threads)", "float32", 1e12)
WEIGHTS = 3_219_776 * 4  # the tiny Llama below: 49152 x 64 tied embedding + 2 layers of 36,992 + the final norm
MLP = 3 * 64 * 128  # layer 0's MLP: the one trained part


@pytest.fixture(scope="module")
def model():
    """The tests' tiny Llama (2 layers, hidden 64), built from its config; only layer 0's MLP trains."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    m = LlamaForCausalLM(config)
    for name, p in m.named_parameters():
        p.requires_grad_(name.startswith("model.layers.0.mlp."))
    return m


def _examples(n: int, length: int, trained: int) -> list[Rendered]:
    return [Rendered(list(range(length)), [0] * (length - trained) + [1] * trained) for _ in range(n)]


def _peak(model, examples, batch, machine=CPU, checkpointing=False, *sets):
    cfg = load_config(None, ["train.packing=false", *sets])
    return progress.peak_bytes(model, examples, batch, cfg, machine, checkpointing=checkpointing)


def test_the_logits_are_the_losss_chunk_not_batch_tokens_times_vocab(model):
    long = _examples(64, 600, 500)
    small, big = _peak(model, long, 2), _peak(model, long, 64)
    assert small.logits == 2 * 500 * VOCAB * 4 * 3  # 1,000 trained positions: below CHUNK, all at once
    assert big.logits == CHUNK * VOCAB * 4 * 3  # 32,000 trained positions, CHUNK at a time
    # (batch tokens x vocab) logits grew by 12 bytes x vocab a token: 27 GB from 2 to 64 examples of 600
    assert big.total - small.total < 0.05 * (64 - 2) * 600 * VOCAB * 12
    assert (small.weights, small.gradients, small.optimizer) == (WEIGHTS, MLP * 4, 2 * MLP * 4)
    per_token = (16 * 64 + 3 * 128) * 4
    assert small.activations == 1200 * 2 * per_token  # (2 x 600 tokens) through both layers
    checkpointed = _peak(model, long, 2, CPU, True)
    assert checkpointed.activations == 1200 * (2 * 64 * 4 + per_token)  # each layer's input, one layer's recompute
    assert checkpointed.total < small.total


def test_packing_on_a_cpu_bounds_a_pass_by_max_length_and_a_gpu_takes_the_micro_batch_at_once(model):
    examples = _examples(8, 600, 100)
    cuda = dataclasses.replace(CPU, device="cuda:0", label="cuda:0 (a GPU)")
    on_cpu = _peak(model, examples, 8, CPU, False, "train.packing=true", "data.max_length=1024")
    on_gpu = _peak(model, examples, 8, cuda, False, "train.packing=true", "data.max_length=1024")
    assert on_cpu.activations == 1024 * 2 * (16 * 64 + 3 * 128) * 4
    assert on_gpu.activations == 8 * 600 * 2 * (16 * 64 + 3 * 128) * 4


def test_sharding_divides_what_is_sharded_and_ddp_builds_every_trained_positions_logits(model):
    long = _examples(64, 600, 500)
    alone = _peak(model, long, 64)
    zero2 = _peak(model, long, 64, Machine("cpu", "", "float32", None, 4, 2, "DEEPSPEED"))
    zero3 = _peak(model, long, 64, Machine("cpu", "", "float32", None, 4, 3, "DEEPSPEED"))
    ddp = _peak(model, long, 64, Machine("cpu", "", "float32", None, 4, 0, "MULTI_GPU"))
    assert (zero2.weights, zero2.gradients, zero2.optimizer) == (WEIGHTS, MLP * 4 / 4, 2 * MLP * 4 / 4)
    assert (zero3.weights, zero3.gradients, zero3.optimizer) == (WEIGHTS / 4, MLP * 4 / 4, 2 * MLP * 4 / 4)
    assert zero3.activations == alone.activations and zero3.logits == alone.logits  # a process's own micro-batch
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (alone.weights, alone.gradients, alone.optimizer)
    assert ddp.logits == 64 * 500 * VOCAB * 4 * 3  # the DDP path's logits_to_keep: every trained position at once
    # DeepSpeed under bf16 keeps an fp32 master copy and fp32 moments, sharded by ZeRO-2
    half = _peak(model, long, 64, Machine("cpu", "", "bfloat16", None, 4, 2, "DEEPSPEED"))
    assert half.optimizer == 12 * MLP / 4


def test_the_sharding_is_read_from_accelerates_plugins(model):
    import torch
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import ShardingStrategy

    def acc(kind, **state):
        return SimpleNamespace(device=torch.device("cpu"), distributed_type=kind, num_processes=4,
                               mixed_precision="no", state=SimpleNamespace(**state))

    zero = lambda stage: acc(DistributedType.DEEPSPEED, deepspeed_plugin=SimpleNamespace(zero_stage=stage))  # noqa: E731
    fsdp = lambda how: acc(DistributedType.FSDP, fsdp_plugin=SimpleNamespace(reshard_after_forward=how))  # noqa: E731
    assert [progress.machine(zero(s), model).sharded for s in (0, 1, 2, 3)] == [0, 1, 2, 3]
    assert [progress.machine(fsdp(how), model).sharded
            for how in (ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP, ShardingStrategy.NO_SHARD,
                        ShardingStrategy.HYBRID_SHARD, True, False)] == [3, 2, 0, 3, 3, 2]
    m = progress.machine(acc(DistributedType.MULTI_CPU), model)
    assert (m.sharded, m.distributed, m.processes, m.dtype) == (0, "MULTI_CPU", 4, "float32")


def test_the_plan_line_names_the_device_and_says_what_helps_when_the_peak_does_not_fit(model, monkeypatch):
    from accelerate import Accelerator

    examples = _examples(16, 100, 40)
    plan = StepPlan(16, 4)
    cfg = load_config(None, ["method.name=full"])
    here = progress.machine(Accelerator(cpu=True), model)
    assert here.label.startswith("CPU (") and " thread" in here.label and here.free_bytes > 0
    line = progress.plan_line(16, 0, 0, plan, 8, progress.estimate(model, examples, plan, 8, cfg, here))
    assert f"peak memory ~0.7 GB on {here.label}" in line and "more than" not in line

    tight = dataclasses.replace(CPU, free_bytes=0.3e9)
    line = progress.plan_line(16, 0, 0, plan, 8, progress.estimate(model, examples, plan, 8, cfg, tight))
    assert line.endswith("peak memory ~0.7 GB on CPU (2 threads); that is more than the 0.3 GB free on cpu: try "
                         "train.gradient_checkpointing=true, a smaller train.batch_size or data.max_length or "
                         "method.name=lora")

    rates = []
    monkeypatch.setattr(progress, "_matmul_rate", lambda device, dtype: rates.append((device, dtype)) or 1e12)
    gpus = Machine("cuda:0", "cuda:0 (NVIDIA H200, 139.8 GB)", "bfloat16", 0.3e9, 4, 3, "FSDP")
    est = progress.estimate(model, examples, StepPlan(16, 4, 1, 4), 8, load_config(), gpus)
    line = progress.plan_line(16, 0, 0, StepPlan(16, 4, 1, 4), 8, est)
    assert rates == [("cuda:0", "bfloat16")]  # timed on the run's device, in its compute dtype
    assert "GB per process, on cuda:0 (NVIDIA H200, 139.8 GB) and 3 more; that is more than the 0.3 GB free on " \
           "cuda:0: try train.gradient_checkpointing=true, a smaller train.batch_size or data.max_length or " \
           "method.name=qlora" in line
    flops = 4 * 3_219_776 * (16 * 100 / 1 * 8)  # adapters: 4N a token; 16 examples of 100 tokens = 1 step an epoch
    assert est.seconds == pytest.approx(flops / (1e12 * progress.CUDA_EFFICIENCY * 4))


@pytest.mark.skipif("not __import__('torch').cuda.is_available()")
def test_on_a_gpu_the_machine_is_the_gpu_in_bf16_and_its_matmul_is_timed_there(model):
    from accelerate import Accelerator

    m = progress.machine(Accelerator(mixed_precision="bf16"), model)
    assert m.device == "cuda:0" and m.label.startswith("cuda:0 (") and m.label.endswith(" GB)")
    assert m.dtype == "bfloat16" and 0 < m.free_bytes
    assert progress._matmul_rate(m.device, m.dtype) > 10 * progress._matmul_rate("cpu", "float32")


# ------------------------------------------------------------------ auto gradient checkpointing in a run


def _free(monkeypatch, free: float) -> None:
    """Every machine the run reads has `free` bytes free."""
    real = progress.machine
    monkeypatch.setattr(progress, "machine", lambda acc, model: dataclasses.replace(real(acc, model), free_bytes=free))


def test_auto_gradient_checkpointing_is_off_with_room_and_on_when_memory_is_short(tiny_model_dir, tmp_path,
                                                                                store_home, monkeypatch):
    from tunesmith.train.finetune import plan

    train, val = sums_dataset(tmp_path / "data")
    sets = tuple(overrides(tiny_model_dir, train, val, tmp_path / "runs"))
    _free(monkeypatch, 100e9)
    roomy = plan(None, overrides=sets)  # the tiny model's peak: ~0.6 GB, most of it the process itself
    assert roomy["chosen"]["train.gradient_checkpointing"]["value"] is False
    assert re.fullmatch(r"peak ~0\.\d GB of 100\.0 GB free", roomy["chosen"]["train.gradient_checkpointing"]["reason"])
    assert re.search(r"gradient_checkpointing off \(peak ~0\.\d GB of 100\.0 GB free\)", roomy["lines"][1])
    assert re.search(r"peak memory ~0\.\d GB on (CPU \(\d+ threads?\)|cuda:\d \(.*GB\))$", roomy["lines"][0])
    _free(monkeypatch, 0.5e9)
    short = plan(None, overrides=sets)
    assert short["chosen"]["train.gradient_checkpointing"]["value"] is True
    assert re.fullmatch(r"peak ~0\.\d GB without it, ~0\.\d GB with it, of 0\.5 GB free; still more than free: "
                        r"see the plan line", short["chosen"]["train.gradient_checkpointing"]["reason"])
    assert "more than the 0.5 GB free" in short["lines"][0] and "train.gradient_checkpointing" not in short["lines"][0]
    _free(monkeypatch, 0.5e9)
    given = plan(None, overrides=sets + ("train.gradient_checkpointing=false",))  # a value set wins
    assert "train.gradient_checkpointing" not in given["chosen"]


def test_a_run_short_of_memory_checkpoints_by_itself_and_trains(tiny_model_dir, tmp_path, store_home, monkeypatch):
    from tunesmith.train import methods
    from tunesmith.train.finetune import finetune

    train, val = sums_dataset(tmp_path / "data")
    calls = {}
    apply_method = methods.apply_method

    def counting(model, method_cfg):  # the first layer's MLP calls: the recompute runs the layer's forward again
        key = len(calls)
        calls[key] = 0
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.__setitem__(key, calls[key] + 1))
        return apply_method(model, method_cfg)

    monkeypatch.setattr(methods, "apply_method", counting)
    runs = []
    for name, free in (("roomy", 100e9), ("short", 0.5e9)):
        _free(monkeypatch, free)
        cfg = load_config(None, overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=2, eval_every=2,
                                          save_every=2))
        runs.append(finetune(cfg, name=name, show_progress=False))
    roomy, short = runs
    assert short.status == "completed" and short.steps == 2 and short.final is not None
    assert calls[1] > calls[0]  # the short run's backward passes ran the layer again
    chosen = [json.loads((r.dir / "manifest.json").read_text())["resolved"]["train.gradient_checkpointing"]["value"]
              for r in runs]
    assert chosen == [False, True]
    assert "gradient_checkpointing: auto" in (short.dir / "config.yaml").read_text()  # what was asked stays asked
