"""GGUF files for llama.cpp and Ollama, written by llama.cpp's own converter and quantizer.

    1. the merged model is a Hugging Face folder (export/merged.write_merged: safetensors, tokenizer, the
       chat template it is served with, stop tokens); a SentencePiece tokenizer also needs its
       tokenizer.model there, taken from the base or rebuilt from the GGUF the base came from
    2. convert_hf_to_gguf.py writes the float files (f32, bf16, f16) and q8_0
    3. llama_model_quantize makes the K-quants (q6_k, q5_k_m, q4_k_m) and q4_0 from the most precise float file

Every architecture llama.cpp's converter knows is covered; one it does not know fails with the
converter's own message, and nothing is left in the export folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import ExportError
from tunesmith.export import llama_cpp
from tunesmith.models.load import gguf_fields

CONVERTED = ("f32", "bf16", "f16", "q8_0")  # written by the converter, most precise first
QUANTIZED = ("q6_k", "q5_k_m", "q4_k_m", "q4_0")  # written by llama.cpp's quantizer from a float file
QUANTS = CONVERTED + QUANTIZED
DEFAULT_QUANTS = ("q4_k_m",)  # what Ollama and llama.cpp users pull by default
# How close llama.cpp must stay to the float32 model, fed its answers (teacher-forced top-1 agreement):
# a wrong tokenizer, tensor layout or norm shift lands far below these; rounding does not.
UNKNOWN, UNUSED, BYTE = 2, 5, 6  # SentencePiece piece types (GGUF's token types use the same numbers)
MIN_TOP1 = {"f32": 0.95, "bf16": 0.85, "f16": 0.9, "q8_0": 0.85, "q6_k": 0.7, "q5_k_m": 0.6, "q4_k_m": 0.5,
            "q4_0": 0.4}


@dataclass(frozen=True)
class GGUFInfo:
    """One written file: where, which type, how big."""

    path: Path
    quant: str
    bytes: int


def parse_quants(text: str) -> list[str]:
    """'f16,Q4_K_M' -> ['f16', 'q4_k_m']; ExportError naming the valid ones otherwise."""
    quants = [q.strip().lower() for q in text.split(",") if q.strip()]
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        raise ExportError(f"unknown GGUF type {', '.join(bad) or repr(text)}",
                          f"choose from {', '.join(QUANTS)} (comma-separated)")
    return list(dict.fromkeys(quants))


def write_ggufs(hf_folder: Path, out: Path, name: str, quants: list[str],
                say: Callable[[str], None] = lambda s: None) -> list[GGUFInfo]:
    """Convert `hf_folder` into `out`/{name}-{quant}.gguf for each quant, converter first, then the quantizer."""
    written: dict[str, Path] = {}
    for quant in [q for q in CONVERTED if q in quants]:
        say(f"converting to {quant} with {llama_cpp.CONVERTER_VERSION}'s convert_hf_to_gguf.py")
        llama_cpp.convert(hf_folder, out / f"{name}-{quant}.gguf", quant)
        written[quant] = out / f"{name}-{quant}.gguf"
    rest = [q for q in QUANTIZED if q in quants]
    if rest:
        source = next((written[q] for q in ("f32", "bf16", "f16") if q in written), None)
        temporary = source is None
        if temporary:  # the converter's 16-bit type for this model (f16, or bf16 for a bf16 model)
            source = out / f".{name}-intermediate.gguf"
            say("converting to 16-bit with llama.cpp's convert_hf_to_gguf.py (the quantizer's input)")
            llama_cpp.convert(hf_folder, source, "auto")
        for quant in rest:
            say(f"quantizing to {quant} with llama.cpp's quantizer")
            llama_cpp.quantize(source, out / f"{name}-{quant}.gguf", quant)
            written[quant] = out / f"{name}-{quant}.gguf"
        if temporary:
            source.unlink()
    return [GGUFInfo(written[q], q, written[q].stat().st_size) for q in quants]


def add_tokenizer_model(folders: list[Path], hf_folder: Path) -> bool:
    """Put the SentencePiece tokenizer.model the converter reads (Gemma, Phi-3, Llama 2, Mistral) beside the
    merged model: the first of `folders` (the run's tokenizer folder, then its base) that has one, else one
    rebuilt from the GGUF a base was converted from."""
    if (hf_folder / "tokenizer.model").is_file():
        return True
    for folder in map(Path, folders):
        if (folder / "tokenizer.model").is_file():
            shutil.copy2(folder / "tokenizer.model", hf_folder / "tokenizer.model")
            return True
    for folder in map(Path, folders):
        source = _source_gguf(folder)
        if source is not None and gguf_fields(source).get("tokenizer.ggml.model") == "llama":
            (hf_folder / "tokenizer.model").write_bytes(sentencepiece_from_gguf(source))
            return True
    return False


def _source_gguf(folder: Path) -> Path | None:
    """The GGUF a store cache folder was converted from (models/load.ensure_converted records its path and
    sha256): that path, or, if the file has moved, the store's GGUF model with the same sha256."""
    from tunesmith.io import read_json_object
    from tunesmith.models.store import ModelStore

    record = read_json_object(folder / "tunesmith_source.json")
    path = Path(str(record.get("gguf") or ""))
    if record.get("gguf") and path.is_file():
        return path
    same = [Path(e.path) for e in ModelStore().list() if e.kind == "gguf" and e.sha256 and e.sha256 == record.get("sha256")]
    return next((p for p in same if p.is_file()), None)


def sentencepiece_from_gguf(path: str | Path) -> bytes:
    """A SentencePiece model (the bytes of a tokenizer.model) from a GGUF's 'llama' tokenizer: its pieces,
    scores and types as stored, BPE with byte fallback, the file's space-prefix rule, no normalisation."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as spm

    reader = gguf.GGUFReader(str(path))

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else default

    if field("tokenizer.ggml.model") != "llama":
        raise ExportError(f"{path} has no SentencePiece tokenizer (tokenizer.ggml.model is "
                          f"'{field('tokenizer.ggml.model')}')")
    tokens, scores = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores")
    types = field("tokenizer.ggml.token_type")
    ids = {key: int(field(f"tokenizer.ggml.{key}_token_id", -1)) for key in ("unknown", "bos", "eos", "padding")}
    model = spm.ModelProto()
    for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
        kind = int(kind)  # GGUF token types are SentencePiece's; only the unk id may be UNKNOWN
        model.pieces.add(piece=piece, score=float(score), type=UNUSED if kind == UNKNOWN and i != ids["unknown"] else kind)
    spec = model.trainer_spec
    spec.model_type = spm.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(k) == BYTE for k in types)
    spec.unk_id, spec.bos_id, spec.eos_id = ids["unknown"], ids["bos"], ids["eos"]
    spec.pad_id = ids["padding"] if ids["padding"] not in (ids["unknown"], ids["bos"], ids["eos"]) else -1
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(field("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return model.SerializeToString()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """A few header fields of a GGUF file (for tests and the model card)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = field("general.architecture")
    keys = ("general.architecture", "general.file_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eot_token_id",
            "tokenizer.chat_template", f"{arch}.block_count", f"{arch}.context_length")
    meta = {k: field(k) for k in keys}
    meta["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
    meta["tensors"] = len(reader.tensors)
    return meta
