"""Helpers for the export/serve/chat tests: a tiny model with a small byte-level BPE vocabulary, and fake runs.

The small vocabulary (~400 tokens) keeps GGUF files and their parsing fast; the real SmolLM2
tokenizer (49k tokens, 49k merges) takes ~10 s to read back per GGUF file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import TOKENIZER_DIR, peak_weights

CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "How do I reset my password? Open settings and choose reset password.",
    "List three colours: red, green and blue. The sea is blue and deep.",
    "Write one sentence about the sea. Numbers like 12345 and 678 appear too!",
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(folder: Path):
    """A byte-level BPE tokenizer (GPT-2 split) with ChatML specials and SmolLM2's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS * 4, trainer)
    template = (TOKENIZER_DIR / "chat_template.jinja").read_text(encoding="utf-8")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = template
    tok.save_pretrained(str(folder))
    return tok


def build_small_vocab_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64, 4 heads, 2 kv heads) on the small tokenizer, saved to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    peak_weights(model)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def make_lora_run(base_dir: Path, run_dir: Path, *, seed: int = 1, name: str | None = None) -> Path:
    """A completed LoRA run folder (manifest, config, data, final/ adapter) whose adapter changes the answers."""
    import torch

    from tunesmith.config import MethodConfig
    from tunesmith.models import adapters
    from tunesmith.models.load import load_model

    model, tok = load_model(str(base_dir), dtype="float32")
    peft_model = adapters.apply_lora(model, MethodConfig(r=4, alpha=8, dropout=0.0))
    torch.manual_seed(seed)
    with torch.no_grad():  # LoRA B starts at zero (a no-op adapter); make it change the outputs
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    final = run_dir / "final"
    final.mkdir(parents=True)
    adapters.save_adapter(peft_model, final)
    tok.save_pretrained(str(final))
    _write_run_files(run_dir, name or run_dir.name, base_dir, "lora")
    return run_dir


def make_full_run(base_dir: Path, run_dir: Path, name: str | None = None) -> Path:
    """A completed full fine-tune run whose final/ is a copy of `base_dir`."""
    shutil.copytree(base_dir, run_dir / "final")
    _write_run_files(run_dir, name or run_dir.name, base_dir, "full")
    return run_dir


def _write_run_files(run_dir: Path, name: str, base_dir: Path, method: str) -> None:
    manifest = {"name": name, "status": "completed", "base_model": str(base_dir), "base_model_path": str(base_dir),
                "base_model_sha256": "0" * 64, "method": method, "method_config": {"r": 4, "alpha": 8},
                "data_fingerprint": "f" * 16, "chat_template_hash": "abc", "seed": 42, "library_versions": {},
                "best_step": 6, "best_val_loss": 1.25, "steps": 6, "created_at": "2026-01-01T00:00:00"}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "config.yaml").write_text("train:\n  lr: 0.001\n  max_steps: 6\n  batch_size: 4\n")
    data = run_dir / "data"
    data.mkdir(exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]}
            for q in ("What is the capital of France?", "List three colours.", "How do I reset my password?")]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "data_card.json").write_text(json.dumps({"format": "chat", "rows_read": 30, "kept": 30, "rejected": 0,
                                                     "splits": {"train": 24, "validation": 3, "test": 3}}))
