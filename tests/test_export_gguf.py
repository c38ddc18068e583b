"""GGUF through llama.cpp's converter and quantizer: the files llama.cpp loads, and the tokenizer it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ASSETS
from tunesmith.errors import ExportError

VOCABS = ASSETS / "llama_cpp_vocab"


@pytest.mark.parametrize("vocab", ["llama-spm", "phi-3"])
def test_tokenizer_model_rebuilt_from_a_gguf_tokenizes_as_llama_cpp_does(vocab):
    """llama.cpp's own test strings and the ids it must produce (models/ggml-vocab-*.gguf.inp/.out)."""
    import sentencepiece

    from tunesmith.export.gguf import sentencepiece_from_gguf

    sp = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_from_gguf(VOCABS / f"ggml-vocab-{vocab}.gguf"))
    texts = (VOCABS / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    expected = (VOCABS / f"ggml-vocab-{vocab}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(texts) > 40
    for text, ids in zip(texts, expected):
        assert sp.encode(text) == [int(i) for i in ids.split()], text


def test_a_gguf_without_a_sentencepiece_tokenizer_is_refused(tmp_path):
    from tunesmith.export.gguf import sentencepiece_from_gguf
    from tunesmith.models.store import builtin_gguf

    with pytest.raises(ExportError, match="no SentencePiece tokenizer .*'gpt2'"):
        sentencepiece_from_gguf(builtin_gguf())


def test_add_tokenizer_model_prefers_the_bases_own_then_the_source_gguf(tmp_path):
    import json

    from tunesmith.export.gguf import add_tokenizer_model

    base, out = tmp_path / "base", tmp_path / "out"
    base.mkdir()
    out.mkdir()
    assert not add_tokenizer_model([tmp_path / 'run-final', base], out)  # nothing to take it from: the converter says what it needs
    (base / "tunesmith_source.json").write_text(json.dumps({"gguf": str(VOCABS / "ggml-vocab-llama-spm.gguf")}))
    assert add_tokenizer_model([tmp_path / 'run-final', base], out) and (out / "tokenizer.model").stat().st_size > 100_000
    (out / "tokenizer.model").unlink()
    (base / "tokenizer.model").write_bytes(b"own")
    assert add_tokenizer_model([tmp_path / 'run-final', base], out) and (out / "tokenizer.model").read_bytes() == b"own"


def test_parse_quants_names_the_valid_ones():
    from tunesmith.export.gguf import parse_quants

    assert parse_quants("f16, Q4_K_M,f16") == ["f16", "q4_k_m"]
    with pytest.raises(ExportError, match="unknown GGUF type q3_k .*f32, bf16, f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0"):
        parse_quants("f16,q3_k")


def test_the_quantizer_refuses_a_type_it_does_not_know(tmp_path):
    from tunesmith.export import llama_cpp

    with pytest.raises(ExportError, match="no quantization type 'q2_xs'"):
        llama_cpp.quantize(tmp_path / "a.gguf", tmp_path / "b.gguf", "q2_xs")


def test_a_file_llama_cpp_cannot_read_is_one_line_not_a_dead_process(tmp_path):
    from tunesmith.export import llama_cpp

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ExportError, match="llama.cpp's quantizer failed") as info:
        llama_cpp.quantize(bad, tmp_path / "out.gguf", "q4_k_m")
    assert "Traceback" not in str(info.value) and not (tmp_path / "out.gguf").exists()


def test_modelfile_points_at_the_default_type():
    from tunesmith.export.ollama import preferred_gguf

    assert preferred_gguf(["a-f16.gguf", "a-q8_0.gguf", "a-q4_k_m.gguf"]) == "a-q4_k_m.gguf"
    assert preferred_gguf(["a-f16.gguf", "a-q8_0.gguf"]) == "a-q8_0.gguf"


def test_status_rule_for_rounded_files():
    """A rounded file is 'close' while llama.cpp, fed the reference answer, agrees often enough; a broken one differs."""
    import torch

    from tunesmith.export import verify

    forced = [torch.eye(4)[[0, 1, 2, 3]]]  # argmax 0, 1, 2, 3
    ref = verify.Reference([[]], [[5]], [[0, 1, 2]], ["x"], forced)
    near = verify.Candidate("llama.cpp", lambda ids: [0, 1, 3], lossless=False, forced_argmax=[[0, 1, 2, 0]],
                            min_top1=0.7)
    assert verify.compare(ref, near)["status"] == "close"  # 3/4 agree
    far = verify.Candidate("llama.cpp", lambda ids: [0, 1, 3], lossless=False, forced_argmax=[[0, 3, 3, 0]],
                           min_top1=0.7)
    assert verify.compare(ref, far)["status"] == "differs"
    wrong_tokens = verify.Candidate("llama.cpp", lambda ids: [0, 1, 2], lossless=False, forced_argmax=[[0, 1, 2, 3]],
                                    extra={"problems": ["llama.cpp tokenizes the prompts differently"]})
    result = verify.compare(ref, wrong_tokens)
    assert result["status"] == "differs"
    with pytest.raises(ExportError, match="tokenizes the prompts differently"):
        verify.require([result], "the export")


def test_vendored_converter_is_the_pinned_one():
    from importlib.metadata import version

    from tunesmith.export import llama_cpp

    assert llama_cpp.CONVERTER.is_file() and (llama_cpp.VENDOR / "gguf-py" / "gguf" / "gguf_writer.py").is_file()
    assert f"llama-cpp-python {version('llama-cpp-python')}" in llama_cpp.CONVERTER_VERSION
    assert (Path(llama_cpp.VENDOR) / "LICENSE").read_text().startswith("MIT License")
