"""Fine-tuning methods: which weights train. lora (adapters via peft), full (every weight), qlora (4-bit base + LoRA)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunesmith.errors import TrainError
from tunesmith.models import adapters


def check_method(name: str) -> None:
    """qlora needs CUDA and bitsandbytes; say so before anything is loaded."""
    if name != "qlora":
        return
    import torch

    if not torch.cuda.is_available():
        raise TrainError("method 'qlora' needs a CUDA GPU, and none is available",
                         "use method.name=lora (same adapters, full-precision base) on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError("method 'qlora' needs the bitsandbytes package, which is not installed",
                         "pip install bitsandbytes, or use method.name=lora")


def load_quantized(folder: Path) -> Any:
    """The base model in 4-bit NF4 with bf16 compute (qlora only; check_method first)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=quant, local_files_only=True,
                                                 trust_remote_code=False, device_map={"": 0})
    return adapters.prepare_kbit(model)


# RMSNorm and SwiGLU are patched on the model's own modules. Not RoPE: Liger swaps it for the
# whole process (a module-level function), and its Triton kernel then fails on any CPU model
# loaded later in the same process (seen on an H200: scoring a tuned model on the CPU after
# training). The loss stays ours: logits only at trained positions.
LIGER_KERNELS = {"rope": False, "rms_norm": True, "swiglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}


def check_fused_kernels(setting: bool | None, model=None) -> str | None:
    """What train.fused_kernels lacks here (None: nothing); raises when it is required (true).

    Without a model only the machine is checked (before a run folder is made); with one, also
    whether Liger knows its type.
    """
    if setting is False:
        return None
    import torch

    missing = ("a CUDA GPU" if not torch.cuda.is_available()
               else "the liger-kernel package" if importlib.util.find_spec("liger_kernel") is None else None)
    if missing is None and model is not None:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

        if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
            missing = f"a model type Liger supports (this one is {model.config.model_type!r})"
    if missing is not None and setting:
        raise TrainError(f"train.fused_kernels=true needs {missing}",
                         "pip install liger-kernel on a CUDA machine, or set train.fused_kernels=null")
    return missing


def fused_kernels(model, setting: bool | None) -> bool:
    """Swap in Liger's Triton kernels (RMSNorm, SwiGLU) on this model, on a CUDA GPU; True when applied.

    setting None: when a CUDA GPU and the liger-kernel package are both there and the model's
    type is one Liger knows; True: required (a clear error if it cannot be); False: never. Call
    before apply_method, so the LoRA layers wrap the patched modules' projections.
    """
    if setting is False or check_fused_kernels(setting, model) is not None:
        return False
    import sys

    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    modeling = sys.modules[type(model).__module__]
    before = dict(vars(modeling))
    _apply_liger_kernel_to_instance(model=model, **LIGER_KERNELS)
    for name, value in before.items():  # Liger also swaps the module's classes: only this model changes
        if vars(modeling).get(name) is not value:
            setattr(modeling, name, value)
    return True


def checkpoint_activations(model) -> None:
    """Keep only each layer's input and recompute the rest in the backward pass (before or after apply_method:
    finetune decides it after, from the memory estimate, train/auto.py).

    Activations are what fill memory once logits are computed only at trained positions; this
    keeps about one layer's worth, for one more forward pass per step (bench/RESULTS.md: on
    2 CPU cores with SmolLM2-135M + LoRA, peak RSS 3399 -> 2162 MB, time 1.7x).
    """
    kwargs = {"use_reentrant": False}  # the non-reentrant form needs no input that requires grad (LoRA)
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.24
    if enable is not None:
        enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def apply_method(model, method_cfg) -> Any:
    """Make exactly the method's weights trainable; returns the model to train."""
    if method_cfg.trains in ("lora", "qlora"):
        return adapters.apply_lora(model, method_cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; a tied embedding / lm_head counts once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_deliverable(model, tokenizer, folder: Path, method: str, state_dict: dict | None = None) -> None:
    """The run's final/: a PEFT adapter folder (lora, qlora) or a full HF model folder (full), with the tokenizer.

    `state_dict`: the weights to write instead of the model's own (gathered from FSDP / DeepSpeed shards).
    """
    if method in ("lora", "qlora"):
        adapters.save_adapter(model, folder, state_dict=state_dict)
    else:
        model.save_pretrained(str(folder), safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    tokenizer.save_pretrained(str(folder))
