"""Write a llama-architecture model and its tokenizer into one GGUF file (f32, f16, q8_0, q4_0) for llama.cpp.

Mirrors llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM: tensor names from gguf's name map,
Q and K rows permuted into llama.cpp's rotary layout (transformers' GGUF loader undoes exactly
this in LlamaTensorProcessor), norms kept in f32, the tokenizer as a byte-level BPE vocabulary with
merges, token types and special ids, and the chat template, so the file is self-contained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tunesmith.errors import ExportError
from tunesmith.io import atomic_dir_file

if TYPE_CHECKING:
    import numpy as np

# name -> (GGMLQuantizationType name, LlamaFileType value written as general.file_type)
QUANTS = {"f32": ("F32", 0), "f16": ("F16", 1), "q8_0": ("Q8_0", 7), "q4_0": ("Q4_0", 2)}
LOSSLESS = {"f32"}  # every other type rounds the weights, so greedy answers may drift slightly
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class GGUFInfo:
    """What was written: file, quantization, tensor count, and the tokenizer pre-type chosen."""

    path: Path
    quant: str
    tensors: int
    pre_tokenizer: str
    bytes: int


def parse_quants(text: str) -> list[str]:
    """'f16,q8_0' -> ['f16', 'q8_0']; ExportError naming the valid ones otherwise."""
    quants = [q.strip().lower() for q in text.split(",") if q.strip()]
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        raise ExportError(f"unknown GGUF quantization {', '.join(bad) or repr(text)}",
                          f"choose from {', '.join(QUANTS)} (comma-separated)")
    return list(dict.fromkeys(quants))


def check_supported(config) -> None:
    """GGUF export covers the llama architecture (SmolLM2, Llama 2/3, TinyLlama...); say so otherwise."""
    problems = []
    if getattr(config, "model_type", None) != "llama":
        problems.append(f"architecture '{getattr(config, 'model_type', '?')}' (only 'llama' is supported)")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            problems.append(f"{flag}=true")
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope scaling '{rope.get('rope_type')}'")
    if problems:
        raise ExportError(f"this model cannot be written as GGUF yet: {', '.join(problems)}",
                          "export with --format merged and convert with llama.cpp's convert_hf_to_gguf.py")


def write_gguf(model, tokenizer, path: str | Path, quant: str = "f16", *, name: str = "model",
               progress: Callable[[int, int], None] | None = None) -> GGUFInfo:
    """Write `model` (a plain, merged LlamaForCausalLM) and `tokenizer` to `path` atomically."""
    import gguf

    check_supported(model.config)
    qname, file_type = QUANTS[quant]
    qtype = gguf.GGMLQuantizationType[qname]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _add_hparams(writer, model.config, name, file_type)
        pre = _add_tokenizer(writer, tokenizer, model.config.vocab_size)
        count = _add_tensors(writer, model, qtype, progress)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
    return GGUFInfo(path, quant, count, pre, path.stat().st_size)


# ------------------------------------------------------------------ hyperparameters


def _rope(config) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return dict(params)


def _rope_theta(config) -> float:
    return float(_rope(config).get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _add_hparams(writer, config, name: str, file_type: int) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_quantization_version(2)


# ------------------------------------------------------------------ tokenizer


def pre_tokenizer_type(tokenizer) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (it must split as training did).

    The GPT-2 regex alone is 'gpt2'; with every digit split off first it is 'smollm'. llama.cpp
    recognises others by hashing a test encoding, which needs its own converter.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    steps = _flatten(backend.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if not byte_level or not byte_level[-1].get("use_regex", True):
        raise ExportError("GGUF export needs a byte-level BPE tokenizer with the GPT-2 split (gpt2 family)",
                          "export with --format merged and convert with llama.cpp's convert_hf_to_gguf.py")
    if kinds == ["ByteLevel"]:
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    raise ExportError(f"the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) has no known llama.cpp name",
                      "export with --format merged and convert with llama.cpp's convert_hf_to_gguf.py")


def _flatten(step: dict | None) -> list[dict]:
    if not step:
        return []
    if step.get("type") == "Sequence":
        return [s for inner in step.get("pretokenizers", []) for s in _flatten(inner)]
    return [step]


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> str:
    from tunesmith.data.render import ensure_chat_template, stop_token_ids

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend.get("model", {}).get("type") != "BPE":
        raise ExportError("GGUF export needs a BPE tokenizer", "export with --format merged instead")
    pre = pre_tokenizer_type(tokenizer)
    tokens, types = _vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    end_of_turn = [t for t in stop_token_ids(tokenizer) if t != tokenizer.eos_token_id]
    if end_of_turn:  # llama.cpp stops on end-of-generation tokens: eos and the template's end-of-turn
        writer.add_eot_token_id(end_of_turn[0])
    writer.add_chat_template(ensure_chat_template(tokenizer))
    return pre


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings in id order with their llama.cpp types; ids the tokenizer lacks become [PADn]."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: tok for i, tok in tokenizer.added_tokens_decoder.items()}
    if max(by_id) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(by_id)} but the model's vocabulary is {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(TOKEN_CONTROL if added[i].special else TOKEN_USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(TOKEN_NORMAL)
    return tokens, types


# ------------------------------------------------------------------ tensors


def _add_tensors(writer, model, qtype, progress) -> int:
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if tied:  # llama.cpp reuses token_embd when output.weight is absent (how transformers reads it too)
        state.pop("lm_head.weight", None)
    for done, (hf_name, tensor) in enumerate(state.items(), 1):
        gguf_name = _gguf_name(name_map, hf_name)
        data = _llama_layout(gguf_name, tensor.detach().float().cpu().numpy(), config)
        _add_one(writer, gguf_name, data, qtype)
        if progress:
            progress(done, len(state))
    return len(state)


def _gguf_name(name_map, hf_name: str) -> str:
    stem, _, suffix = hf_name.rpartition(".")
    mapped = name_map.get_name(stem)
    if mapped is None:
        raise ExportError(f"tensor '{hf_name}' has no llama.cpp name", "this model's layout is not plain llama")
    return f"{mapped}.{suffix}"


def _llama_layout(gguf_name: str, data: "np.ndarray", config) -> "np.ndarray":
    """Permute Q/K rows from HF's rotate-half layout to llama.cpp's interleaved rotary pairs."""
    if gguf_name.endswith("attn_q.weight"):
        return permute_qk(data, config.num_attention_heads)
    if gguf_name.endswith("attn_k.weight"):
        return permute_qk(data, config.num_key_value_heads or config.num_attention_heads)
    return data


def permute_qk(weights: "np.ndarray", n_head: int) -> "np.ndarray":
    """llama.cpp's `permute` (convert_hf_to_gguf.py); transformers' `_reverse_permute_weights` inverts it."""
    dim = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, 2, dim, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _add_one(writer, name: str, data: "np.ndarray", qtype) -> None:
    import gguf

    packed, qtype = pack(data, qtype)
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        writer.add_tensor(name, packed)
    else:
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)


def pack(data: "np.ndarray", qtype) -> tuple["np.ndarray", Any]:
    """The bytes (or floats) written for one tensor, and the type actually used."""
    import gguf
    import numpy as np

    if data.ndim == 1:  # norms stay f32 in every llama.cpp file type
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:  # rows must fill whole blocks to be block-quantized
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def expected_weights(model, quant: str) -> dict[str, "np.ndarray"]:
    """What a reader of the file should get back for each weight: the tensor rounded exactly as written."""
    import gguf

    qtype = gguf.GGMLQuantizationType[QUANTS[quant][0]]
    out = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        packed, used = pack(tensor.detach().float().cpu().numpy(), qtype)  # row-wise: the Q/K permutation commutes
        out[name] = gguf.quants.dequantize(packed, used).astype("float32")
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A few header fields of a GGUF file (for tests and the model card)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    keys = ("general.architecture", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eot_token_id",
            "tokenizer.chat_template", "llama.block_count", "llama.context_length")
    meta = {k: field(k) for k in keys}
    meta["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
    meta["tensors"] = len(reader.tensors)
    return meta
