"""`export(spec, format, out)`: write a run as adapter, merged model or GGUF, and prove it answers the same.

    1. resolve the run (or model), load it in memory, record its greedy answers on held-out prompts
    2. write the format into a temp folder beside `out`
    3. reload what was written (peft / transformers / transformers' GGUF reader / llama.cpp) and compare
    4. write verification.json and the model card, then move the folder into place

A failed verification raises ExportError and leaves nothing at `out`. An existing `out` is replaced
only when it is empty or, with `overwrite`, a previous export (see `check_out`).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import ExportError
from tunesmith.models import store
from tunesmith.export import llama_cpp, verify
from tunesmith.runs.deliverable import Deliverable, resolve
from tunesmith.io import Keep, read_json_object, atomic_dir, atomic_write_json, atomic_write_text, replace_clash, some_names

FORMATS = ("adapter", "merged", "gguf")
MARKER = {"created_by": "tunesmith"}  # in verification.json, beside the list of files the export wrote


@dataclass
class ExportResult:
    """Where the export went, what it holds, and how it verified."""

    out: Path
    format: str
    files: list[str]
    verification: dict[str, Any]


def export(spec: str | Path | Deliverable, fmt: str, out: str | Path, *, quants: tuple[str, ...] = ("q4_k_m",),
           n_prompts: int = 4, max_new_tokens: int = 32, overwrite: bool = False, dtype: str | None = None,
           say: Callable[[str], None] = lambda s: None) -> ExportResult:
    """Export `spec` (a run name or folder, or a model) as `fmt` into folder `out`; verified before it appears.

    `dtype` (merged only): float32, bfloat16 or float16; default the base model's (merged.save_dtype).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'", f"choose one of {', '.join(FORMATS)}")
    if dtype is not None and fmt != "merged":
        raise ExportError(f"--dtype applies to the merged export, not {fmt}",
                          "drop --dtype (an adapter keeps its trained dtype; GGUF has --quant)")
    out = Path(out).expanduser().resolve()
    if fmt == "gguf":
        from tunesmith.export.gguf import parse_quants

        quants = tuple(parse_quants(",".join(quants)))
    started = time.time()
    # 1. the tuned model in memory and its answers: the reference every reload is compared with
    source = spec if isinstance(spec, Deliverable) else resolve(spec)
    check_out(out, overwrite, source)
    say(f"loading {source.kind} '{source.name}' and recording its answers on {n_prompts} prompts")
    model, tok = source.load(device="cpu", dtype="float32")  # the float32 reference every reload is held to
    ref = verify.reference(model, tok, verify.prompts_for(source.run_dir, n_prompts), max_new_tokens)
    with atomic_dir(out, overwrite=True) as tmp:  # check_out decided what may be replaced
        # 2-3. write, reload, compare
        step = {"adapter": _adapter, "merged": functools.partial(_merged, dtype=dtype), "gguf": _gguf}[fmt]
        files, checks = step(source, model, tok, tmp, ref, quants, say)
        verification = _verification(source, fmt, ref, checks, max_new_tokens, time.time() - started)
        verify.require(checks, f"the {fmt} export of '{source.name}'")
        # 4. the record of the comparison and the model card travel with the files
        from tunesmith.export.card import model_card

        listed = sorted({p.name for p in tmp.iterdir()} | {"verification.json", "README.md"})
        verification.update(MARKER, files=listed)  # what a later --overwrite may replace
        atomic_write_json(tmp / "verification.json", verification)
        atomic_write_text(tmp / "README.md", model_card(source, fmt, out, verification, listed))
        check_out(out, overwrite, source)  # again: the export took a while, and `out` may have changed since
    return ExportResult(out, fmt, sorted(p.name for p in out.iterdir()), verification)


def check_out(out: Path, overwrite: bool, source: Deliverable) -> None:
    """ExportError unless writing the export to `out` destroys nothing that is not an earlier export.

    `out` may be missing or empty. An existing folder needs `overwrite` and must be an export
    tunesmith wrote (verification.json with MARKER) holding only the files it listed. Never
    replaced: the current folder, your home folder, $TUNESMITH_HOME (or a folder holding one of
    them, or inside $TUNESMITH_HOME), the source run and its base model (or a folder holding them;
    an earlier export inside the run may be replaced, it holds nothing else).
    """
    if out.is_file():
        raise ExportError(f"--out {out} is a file", "give a folder to create")
    if not out.is_dir():
        return
    keep = store.places_to_keep() + _source_places(source)
    clash = replace_clash(out, keep)
    if clash:
        raise ExportError(f"--out {out} {clash}: an export never replaces it", "choose another --out")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{out} already exists", "choose another --out, or pass --overwrite to replace a previous export")
    _check_previous_export(out)


def _source_places(source: Deliverable) -> list[Keep]:
    places = [Keep("the base model", source.base_folder)]
    if source.run_dir is not None:
        places.append(Keep(f"run '{source.name}'", source.run_dir))
    if Path(source.base_spec).exists():  # a GGUF file or model folder given by path
        places.append(Keep("the base model", Path(source.base_spec)))
    return places


def _check_previous_export(out: Path) -> None:
    """ExportError unless `out` is an export tunesmith wrote and holds nothing else."""
    try:
        record = json.loads((out / "verification.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or "checks" not in record:
        raise ExportError(f"{out} is not a tunesmith export (it has no verification.json of one); --overwrite "
                          "replaces only a previous export", "choose another --out, or empty the folder yourself")
    if record.get("created_by") != MARKER["created_by"] or not isinstance(record.get("files"), list):
        raise ExportError(f"{out} is an export by an older tunesmith, which did not record its files; --overwrite "
                          "cannot tell them from yours", "delete the folder yourself, or choose another --out")
    extra = sorted(p.name for p in out.iterdir() if p.name not in record["files"])
    if extra:
        raise ExportError(f"{out} holds files the export did not write: {some_names(extra)}",
                          "move them out first, or choose another --out")


def _verification(source: Deliverable, fmt: str, ref: verify.Reference, checks: list[dict], max_new_tokens: int,
                  seconds: float) -> dict[str, Any]:
    return {
        "format": fmt, "source": source.name, "kind": source.kind,
        "reference": "the tuned model in memory (float32)" + (", base + adapter" if source.kind == "lora" else ""),
        "n_prompts": len(ref.prompts), "max_new_tokens": max_new_tokens,
        "prompts": [p[-1]["content"] for p in ref.prompts], "reference_answers": ref.texts,
        "checks": checks,
        "passed": all(c.get("status") in ("match", "close", "skipped") for c in checks),
        "seconds": round(seconds, 1),
    }


# ------------------------------------------------------------------ the three formats


def _adapter(source, model, tok, tmp: Path, ref, quants, say) -> tuple[list[Path], list[dict]]:
    from tunesmith.export.adapter import reload_adapter, write_adapter

    files = write_adapter(source, tok, tmp)
    say(f"wrote the adapter; reloading it with peft on {source.base_folder}")
    del model
    reloaded, rtok = reload_adapter(tmp, source.base_folder)
    check = verify.compare(ref, _hf_candidate("peft.PeftModel.from_pretrained", reloaded, rtok, ref))
    check.update(verify.tokenizer_check(tok, rtok, ref.prompts))
    return files, [check]


def _merged(source, model, tok, tmp: Path, ref, quants, say, dtype: str | None = None) -> tuple[list[Path], list[dict]]:
    """A float32 save must answer exactly; a bf16/fp16 one rounds the weights, so it is 'close' when the
    weights read back are exactly the rounded ones, whatever the rounding did to the answers."""
    from tunesmith.export.merged import merged_model, reload_merged, save_dtype, write_merged

    saved = save_dtype(source, dtype)
    plain = merged_model(model, source)
    del model
    files = write_merged(plain, tok, tmp, saved)  # `plain` is now in `saved`: the weights expected back
    say(f"wrote the merged model ({saved}); reloading it with transformers")
    reloaded, rtok = reload_merged(tmp)
    extra = {"dtype": saved}
    if saved != "float32":
        extra.update(verify.weights_check(plain.state_dict(), reloaded))
    del plain
    cand = _hf_candidate("transformers.AutoModelForCausalLM", reloaded, rtok, ref, lossless=saved == "float32",
                         extra=extra)
    check = verify.compare(ref, cand)
    check.update(verify.tokenizer_check(tok, rtok, ref.prompts))
    return files, [check]


def _gguf(source, model, tok, tmp: Path, ref, quants, say) -> tuple[list[Path], list[dict]]:
    """The merged model as a Hugging Face folder -> llama.cpp's converter and quantizer -> each file checked in llama.cpp."""
    import shutil

    from tunesmith.export.gguf import add_tokenizer_model, write_ggufs
    from tunesmith.export.merged import merged_model, save_dtype, write_merged
    from tunesmith.export.ollama import modelfile, preferred_gguf
    from tunesmith.models.load import load_tokenizer

    llama_cpp.require()
    hf = tmp / ".converter-input"  # removed once the GGUF files are written
    hf.mkdir()
    write_merged(merged_model(model, source), tok, hf, save_dtype(source))  # a bf16 base gives bf16 -> auto
    del model
    add_tokenizer_model([source.tokenizer_folder, source.base_folder], hf)
    template = load_tokenizer(hf).chat_template  # what the converter puts in the file
    model_type = read_json_object(hf / "config.json").get("model_type", "?")
    infos = write_ggufs(hf, tmp, source.name, list(quants), say)
    shutil.rmtree(hf)
    checks = []
    for info in infos:
        say(f"wrote {info.path.name} ({info.bytes / 1e6:.1f} MB); loading it in llama.cpp")
        checks.append(_llama_cpp_check(info, tok, template, ref, model_type))
    atomic_write_text(tmp / "Modelfile", modelfile(preferred_gguf([i.path.name for i in infos]), tok))
    tok.save_pretrained(str(tmp))  # the served tokenizer beside the files: `tunesmith serve` (and vLLM) prompt with it
    return [i.path for i in infos] + [tmp / "Modelfile"], checks


def _llama_cpp_check(info, tok, template: str, ref, model_type: str) -> dict:
    """Greedy answers and teacher-forced agreement in llama.cpp, and llama.cpp's own reading of the prompts:
    its tokenization of the rendered prompt text and the chat template in the file must equal ours."""
    from tunesmith.data.render import prompt_text, stop_token_ids
    from tunesmith.export.gguf import MIN_TOP1

    max_new = max((len(a) for a in ref.answers), default=1)
    texts = [prompt_text(p, tok) for p in ref.prompts]
    got = llama_cpp.run(info.path, ref.prompt_ids, ref.answers, texts=texts, stop_ids=stop_token_ids(tok),
                        max_new_tokens=max_new)
    problems = []
    if got["tokenized"] != ref.prompt_ids:
        problems.append(f"llama.cpp tokenizes the prompts of this '{model_type}' model differently from its tokenizer "
                        f"(llama.cpp's pre-tokenizer '{got['metadata'].get('tokenizer.ggml.pre')}'), so a llama.cpp "
                        "user would prompt it unlike training")
    if got["chat_template"] != template:
        problems.append("the chat template in the file is not the one the model is served with")
    answers = {tuple(p): a for p, a in zip(ref.prompt_ids, got["generated"])}
    extra = {"file": info.path.name, "quant": info.quant, "bytes": info.bytes, "converter": llama_cpp.CONVERTER_VERSION,
             "prompt_ids_match": got["tokenized"] == ref.prompt_ids, "chat_template_match": got["chat_template"] == template,
             **({"problems": problems} if problems else {})}
    cand = verify.Candidate("llama.cpp (llama-cpp-python)", lambda ids: answers[tuple(ids)], lossless=False,
                            extra=extra, forced_argmax=got["forced_argmax"], min_top1=MIN_TOP1[info.quant])
    return verify.compare(ref, cand)


def _hf_candidate(loader: str, model, tok, ref, *, lossless: bool = True, extra: dict | None = None) -> verify.Candidate:
    """Greedy generation with the same stop ids and length as the reference's."""
    max_new = max((len(a) for a in ref.answers), default=1)
    return verify.Candidate(loader, verify.hf_generate(model, tok, max_new),
                            verify.hf_logits(model), lossless, extra or {})
