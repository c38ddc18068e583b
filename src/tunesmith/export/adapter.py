"""The `adapter` export: a standard PEFT folder that plain `peft.PeftModel.from_pretrained` loads, with the tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunesmith.errors import ExportError
from tunesmith.export.base import base_model
from tunesmith.runs.deliverable import Deliverable

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def write_adapter(source: Deliverable, tokenizer, out: Path) -> list[Path]:
    """Copy the run's adapter and save its tokenizer (with the chat template) into `out`."""
    if source.kind != "lora":
        raise ExportError(f"'{source.name}' is a {'full fine-tune' if source.kind == 'full' else 'plain model'}: "
                          "it has no adapter", "use --format merged or --format gguf")
    for name in ADAPTER_FILES:
        shutil.copy2(source.final / name, out / name)
    _point_at_base(out / "adapter_config.json", base_model(source).name)
    tokenizer.save_pretrained(str(out))
    return [out / name for name in ADAPTER_FILES]


def _point_at_base(config_path: Path, name: str) -> None:
    """Record the base by its portable name (a hub id or store name), never this machine's folder: the
    model card names the local folder and its sha256, and reload_adapter passes the folder itself."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = name
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def reload_adapter(out: Path, base_folder: Path):
    """(model, tokenizer) the way a peft user loads it: the base from disk, then the adapter folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models import adapters

    base = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype="float32", local_files_only=True)
    model = adapters.load_adapter(base, out)  # PeftModel.from_pretrained(base, out)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(out), local_files_only=True)
