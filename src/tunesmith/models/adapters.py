"""The one seam around peft: attach, load, stack and merge LoRA adapters (no other module imports peft)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ModelError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def lora_config(method_cfg: Any, *, inference_mode: bool = False):
    """A peft LoraConfig from tunesmith's `method` section (r, alpha, dropout, targets, rsLoRA, DoRA)."""
    from peft import LoraConfig

    if "auto" in (method_cfg.r, method_cfg.alpha):  # a training run chooses them from its data (train/auto.py)
        raise ValueError("method.r and method.alpha must be numbers here: 'auto' is chosen by a training run")
    targets = method_cfg.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(
        task_type="CAUSAL_LM", r=method_cfg.r, lora_alpha=method_cfg.alpha, lora_dropout=method_cfg.dropout,
        target_modules=targets, use_rslora=method_cfg.use_rslora, use_dora=method_cfg.use_dora,
        bias="none", inference_mode=inference_mode,
    )


def apply_lora(model: "PreTrainedModel", method_cfg: Any) -> "PeftModel":
    """Wrap `model` with fresh LoRA adapters; only the adapter weights stay trainable."""
    import warnings

    from peft import get_peft_model

    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5 (noise, not a problem)
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, lora_config(method_cfg))
    except ValueError as e:  # peft: "Target modules {...} not found in the base model."
        raise ModelError(f"LoRA cannot be applied: {_short(e)}",
                         "set method.target_modules to 'all-linear' or to module names the model has") from None


def is_adapter_dir(folder: str | Path) -> bool:
    """True when `folder` holds a PEFT adapter (adapter_config.json + weights)."""
    return (Path(folder) / "adapter_config.json").is_file()


def load_adapter(base_model: "PreTrainedModel", adapter_dir: str | Path, adapter_name: str = "default",
                 *, trainable: bool = False) -> "PeftModel":
    """Put the adapter saved in `adapter_dir` on `base_model` (frozen unless `trainable`)."""
    from peft import PeftModel

    import warnings

    _check_adapter_dir(adapter_dir)
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5 (noise, not a problem)
            warnings.simplefilter("ignore", FutureWarning)
            return PeftModel.from_pretrained(base_model, str(adapter_dir), adapter_name=adapter_name, is_trainable=trainable)
    except Exception as e:  # peft raises many types for mismatched shapes / modules
        raise ModelError(f"{adapter_dir}: the adapter does not fit this base model ({_short(e)})",
                         "load it on the base model it was trained from (see the run's manifest.json)") from None


def add_adapter(peft_model: "PeftModel", adapter_dir: str | Path, adapter_name: str) -> "PeftModel":
    """Load another adapter onto the same base (switch with `peft_model.set_adapter(name)`)."""
    _check_adapter_dir(adapter_dir)
    try:
        peft_model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=False)
    except Exception as e:
        raise ModelError(f"{adapter_dir}: adapter '{adapter_name}' does not load ({_short(e)})") from None
    return peft_model


def merge(peft_model: "PeftModel") -> "PreTrainedModel":
    """Fold the active adapter into the base weights and return the plain transformers model."""
    return peft_model.merge_and_unload()


def is_peft(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def set_lora_trainable(peft_model: "PeftModel") -> None:
    """Mark exactly the LoRA weights trainable (after loading a checkpoint for resume)."""
    for name, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in name)


def save_adapter(peft_model: "PeftModel", folder: str | Path, state_dict: dict | None = None) -> None:
    """Write adapter_config.json + adapter_model.safetensors into `folder` (the adapter's weights taken
    from `state_dict`, the whole model's, when given)."""
    peft_model.save_pretrained(str(folder), safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))


def _check_adapter_dir(adapter_dir: str | Path) -> None:
    folder = Path(adapter_dir)
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"{folder} is not a PEFT adapter folder: {', '.join(missing)} missing",
                         "give a run's final/ folder or an exported adapter")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


def prepare_kbit(model: "PreTrainedModel") -> "PreTrainedModel":
    """peft's preparation of a 4-bit model for training (QLoRA): norms in fp32, input grads on."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def base_model_of(peft_model: "PeftModel"):
    """A context manager in which `peft_model` runs as its base model (adapters off), e.g. to compare."""
    return peft_model.disable_adapter()
