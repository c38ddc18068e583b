"""How a run spreads over processes, through accelerate: the launch checks, DeepSpeed's fields, sharded state.

    check_launch(acc)            a launch runs as it asked (FSDP, DeepSpeed, N processes) or stops in one line
    configure(acc, cfg)          DeepSpeed's batch, accumulation and clipping fields from the run's config,
                                 before accelerate.prepare (which needs them without a DataLoader)
    sharded(acc)                 FSDP or DeepSpeed: the weights, gradients or optimizer state live in shards
    save_state / load_state      every process writes / reads its own shard of the model and optimizer
                                 (accelerate's save_state / load_state) into a checkpoint's `sharded/` folder
    full_state(acc, model)       the whole state dict, gathered from the shards (every process must call;
                                 the main process gets it, the others an empty dict)

Under DDP and one process the model and optimizer are whole on every process: checkpoints keep the
plain optimizer.pt and none of this applies. The loop's side of it (gradient sync switched off
between micro-batches, DeepSpeed stepping only on the last) is in loop.py; the loss's (the wrapped
model's own forward when its weights are sharded) in loss.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunesmith.errors import LaunchError, RunError

_LAUNCH_HINT = ("on CPU processes use DDP: accelerate launch --multi_gpu --num_processes N $(which tunesmith) train "
                "CONFIG.yaml (the processes talk over gloo); FSDP and DeepSpeed shard over one GPU per process")


def kind(acc) -> str:
    """'FSDP', 'DEEPSPEED', 'MULTI_GPU', 'MULTI_CPU', 'NO'..., accelerate's name for how this run is spread."""
    return str(acc.distributed_type).rsplit(".", 1)[-1]


def sharded(acc) -> bool:
    return kind(acc) in ("FSDP", "DEEPSPEED")


def describe(acc) -> dict[str, Any]:
    """What the manifest records of the launch: a sharded checkpoint resumes only under the same one."""
    out: dict[str, Any] = {"type": kind(acc), "processes": acc.num_processes}
    if kind(acc) == "DEEPSPEED":
        out["zero_stage"] = acc.state.deepspeed_plugin.zero_stage
    elif kind(acc) == "FSDP":
        out["fsdp_version"] = acc.state.fsdp_plugin.fsdp_version
    return out


def accelerator(*, cpu: bool, mixed_precision: str):
    """accelerate's Accelerator for this process, checked against what the launch asked (check_launch)."""
    from accelerate import Accelerator

    try:
        acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    except RuntimeError as e:  # e.g. FSDP's plugin looks for a GPU to sync module states on
        asked = _asked_sharding(os.environ)
        if asked and cpu:
            raise LaunchError(_no_gpus(asked, f"accelerate stopped: {str(e).strip()}"), _LAUNCH_HINT) from None
        raise
    check_launch(acc)
    return acc


def check_launch(acc, env: dict[str, str] | None = None) -> None:
    """TrainError when accelerate would run this launch otherwise than it asked: FSDP or DeepSpeed that
    became plain data parallelism (accelerate shards only on GPUs), or N processes that became one."""
    env = os.environ if env is None else env
    here = kind(acc)
    asked = _asked_sharding(env)
    if asked and here != asked:
        where = f"{acc.num_processes} process(es) on {acc.device.type.upper()}"
        raise LaunchError(_no_gpus(asked, f"here it would train as {here} ({where}) without sharding anything"),
                         _LAUNCH_HINT)
    launched = "ACCELERATE_MIXED_PRECISION" in env  # set by every `accelerate launch`
    several = "MASTER_ADDR" in env and not any(k in env for k in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE",
                                                                    "OMPI_COMM_WORLD_SIZE"))
    if launched and several and acc.num_processes == 1:
        raise LaunchError("this launch asked for several processes, but accelerate started only this one "
                         "(`accelerate launch --cpu`, or use_cpu: true in its config, starts a single process)",
                         "drop --cpu / use_cpu and pass --multi_gpu --num_processes N: on a machine without GPUs "
                         "the processes run on the CPU over gloo")


def configure(acc, cfg) -> None:
    """Fill DeepSpeed's `auto` fields that accelerate cannot infer without a DataLoader; refuse the ones
    that would fight tunesmith's own accumulation. Nothing to do for other launches."""
    if kind(acc) != "DEEPSPEED":
        return
    if cfg.train.time_budget:
        raise LaunchError("train.time_budget cannot be planned under DeepSpeed: its engine takes the optimizer step "
                         "inside the backward pass, so a step cannot be timed without taking it",
                         "set train.max_steps or train.epochs instead")
    plugin = acc.state.deepspeed_plugin
    ds = plugin.deepspeed_config
    gas = ds.get("gradient_accumulation_steps", "auto")
    if gas not in ("auto", 1):
        raise LaunchError(f"the DeepSpeed config sets gradient_accumulation_steps: {gas}; tunesmith accumulates "
                         "itself (train.grad_accum) and tells DeepSpeed where each step ends",
                         f"set gradient_accumulation_steps: 1 in the DeepSpeed config and train.grad_accum={gas}")
    ds["gradient_accumulation_steps"] = 1
    for key, value in (("train_micro_batch_size_per_gpu", cfg.train.batch_size),
                       ("gradient_clipping", cfg.train.max_grad_norm)):
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * acc.num_processes
    if plugin.zero_stage == 3:  # the deliverable is the gathered weights (accelerate's get_state_dict)
        ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True


def save_state(acc, folder: Path) -> Path:
    """Every process writes its shard of the model and optimizer into `folder` (accelerate's save_state:
    FSDP's distributed checkpoint, DeepSpeed's per-rank ZeRO files); a checkpoint's sharded/ once sealed."""
    acc.save_state(str(folder), safe_serialization=True)
    acc.wait_for_everyone()
    return folder


def load_state(acc, shards: Path) -> None:
    """Every process reads its shard back from a checkpoint's sharded/ (the model's and optimizer's state
    as they were at the save)."""
    acc.load_state(str(shards))
    acc.wait_for_everyone()


def check_resume(acc, recorded: dict | None, has_shards: bool, run: str) -> None:
    """A checkpoint resumes under the launch it was made by when either holds shards: the optimizer's
    state is split by process (a whole one cannot be poured into shards, nor shards into a whole)."""
    now = describe(acc)
    if not (has_shards or sharded(acc)) or recorded == now:
        return
    def said(d):
        return "one process" if not d or d["type"] == "NO" else f"{d['type']} over {d['processes']} process(es)"
    raise RunError(f"cannot resume run '{run}' as {said(now)}: its checkpoints were written under {said(recorded)} "
                   f"and {'hold' if has_shards else 'do not hold'} the optimizer's state in shards",
                   f"resume it with the launch it started with ({said(recorded)})")


def full_state(acc, model) -> dict:
    """The model's whole state dict on the main process, gathered from every process's shards."""
    state = acc.get_state_dict(model)  # a collective under FSDP and ZeRO-3: every process calls it
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()} if acc.is_main_process else {}


def local(value):
    """A plain number from what clip_grad_norm_ returns: a tensor, an FSDP DTensor, a float or None."""
    if value is None:
        return None
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def _asked_sharding(env) -> str | None:
    """'FSDP' or 'DEEPSPEED' when `accelerate launch` was given a config (or flag) asking for it."""
    for asked, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DEEPSPEED", "ACCELERATE_USE_DEEPSPEED")):
        if str(env.get(flag)).lower() in ("1", "true", "yes"):
            return asked
    return None


def _no_gpus(asked: str, what: str) -> str:
    import accelerate

    name = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}[asked]
    return f"this launch asks for {name}, but accelerate {accelerate.__version__} runs {name} only on GPUs: {what}"
