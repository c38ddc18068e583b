"""The `merged` export: adapter folded into the base, saved as safetensors with tokenizer, chat template
and a generation config that stops at the end-of-turn token, loadable by plain transformers."""

from __future__ import annotations

from pathlib import Path

from tunesmith.runs.deliverable import Deliverable


def merged_model(model, source: Deliverable):
    """The plain transformers model with the adapter folded in (in place: `model` is consumed)."""
    from tunesmith.models import adapters

    return adapters.merge(model) if source.kind == "lora" else model


def write_merged(model, tokenizer, out: Path) -> list[Path]:
    """save_pretrained (safetensors) + tokenizer + generation_config.json that stops at end of turn."""
    from tunesmith.data.render import ensure_chat_template, stop_token_ids

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
