"""The `merged` export: adapter folded into the base, saved as safetensors with tokenizer, chat template
and a generation config that stops at the end-of-turn token, loadable by plain transformers.

Saved in the base model's dtype (a bf16 base stays bf16, half the size of float32) unless asked
otherwise; see `save_dtype`. The GGUF export converts this folder, so it inherits what is saved here.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import ExportError
from tunesmith.runs.deliverable import Deliverable


def merged_model(model, source: Deliverable):
    """The plain transformers model with the adapter folded in (in place: `model` is consumed)."""
    from tunesmith.models import adapters

    return adapters.merge(model) if source.kind == "lora" else model


def save_dtype(source: Deliverable, requested: str | None = None) -> str:
    """The dtype a merged export is saved in: `requested` (float32, bfloat16, float16) when given, else the
    base's own: its config.json's `dtype` (or `torch_dtype`), for a full run the base it started from;
    a GGUF base was converted to float32 in the store cache, and that folder's config says so."""
    from tunesmith.export.base import DTYPES, base_model

    if requested is not None and requested not in DTYPES:
        raise ExportError(f"unknown dtype '{requested}'", f"choose one of {', '.join(DTYPES)}")
    return requested or base_model(source).dtype


def write_merged(model, tokenizer, out: Path, dtype: str = "float32") -> list[Path]:
    """save_pretrained (safetensors, in `dtype`: the model is cast in place) + tokenizer + generation_config.json
    that stops at end of turn. The tokenizer is saved as given: a run's carries its system prompt as the
    chat template's default (Deliverable.tokenizer)."""
    import torch

    from tunesmith.data.render import ensure_chat_template, stop_token_ids

    model.to(getattr(torch, dtype))
    ensure_chat_template(tokenizer)
    gen = model.generation_config
    gen.eos_token_id = stop_token_ids(tokenizer)
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return sorted(out.glob("*.safetensors")) + [out / "config.json", out / "generation_config.json"]


def reload_merged(out: Path):
    """(model, tokenizer) as a plain transformers user loads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype="float32", local_files_only=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(out), local_files_only=True)
