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


def apply_method(model, method_cfg) -> Any:
    """Make exactly the method's weights trainable; returns the model to train."""
    if method_cfg.name in ("lora", "qlora"):
        return adapters.apply_lora(model, method_cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; a tied embedding / lm_head counts once."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_deliverable(model, tokenizer, folder: Path, method: str) -> None:
    """The run's final/: a PEFT adapter folder (lora, qlora) or a full HF model folder (full), with the tokenizer."""
    if method in ("lora", "qlora"):
        adapters.save_adapter(model, folder)
    else:
        model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
