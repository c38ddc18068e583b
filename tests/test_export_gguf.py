"""GGUF writer: llama.cpp's layout (inverted exactly by transformers' reader), quantization, tokenizer metadata."""

from __future__ import annotations

import numpy as np
import pytest

from deploy_helpers import build_small_vocab_model
from tunesmith.errors import ExportError


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    return build_small_vocab_model(tmp_path_factory.mktemp("small-vocab"))


@pytest.fixture(scope="module")
def small_model(small_model_dir):
    import torch

    from tunesmith.models.load import load_model

    torch.set_num_threads(1)
    return load_model(str(small_model_dir), dtype="float32")


def test_qk_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from tunesmith.export.gguf import permute_qk

    w = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    permuted = permute_qk(w, 4)
    assert not np.array_equal(permuted, w)
    back = LlamaTensorProcessor({})._reverse_permute_weights(permuted, 4, 4)
    assert np.array_equal(back, w)
    # one head of 16 rows: rotate-half pairs (0, 8), (1, 9)... become adjacent rows (0, 1), (2, 3)...
    one = np.arange(16, dtype=np.float32)[:, None]
    assert permute_qk(one, 1)[:, 0].tolist() == [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15]


def test_roundtrip_through_transformers_gguf_reader(small_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export.gguf import read_metadata, write_gguf

    model, tok = small_model
    ids = torch.tensor([tok("What is the capital of France? 12345")["input_ids"]])
    ref = model(ids).logits
    diffs = {}
    for quant in ("f32", "f16", "q8_0"):
        info = write_gguf(model, tok, tmp_path / f"m-{quant}.gguf", quant, name="small")
        assert info.tensors == 2 * 9 + 2  # 9 per block, token_embd, output_norm (output tied to token_embd)
        loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=info.path.name, dtype=torch.float32)
        diffs[quant] = float((loaded(ids).logits - ref).abs().max())
    assert diffs["f32"] == 0.0
    assert 0 < diffs["f16"] < 0.2 and diffs["f16"] < diffs["q8_0"] < 5
    meta = read_metadata(tmp_path / "m-q8_0.gguf")
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 7
    assert meta["tensor_types"] == ["F32", "Q8_0"]  # norms stay f32
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt2"
    assert meta["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.chat_template"] == tok.chat_template
    gtok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m-q8_0.gguf")
    text = tok.apply_chat_template([{"role": "user", "content": "List three colours: red, 12!"}], tokenize=False,
                                   add_generation_prompt=True)
    assert gtok(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_parse_quants_names_the_valid_ones():
    from tunesmith.export.gguf import parse_quants

    assert parse_quants("f16, q8_0,f16") == ["f16", "q8_0"]
    with pytest.raises(ExportError, match="unknown GGUF quantization q3_k .*f32, f16, q8_0, q4_0"):
        parse_quants("f16,q3_k")


def test_other_architectures_are_refused_with_a_way_out():
    from types import SimpleNamespace

    from tunesmith.export.gguf import check_supported

    with pytest.raises(ExportError, match="architecture 'gpt2'.*--format merged"):
        check_supported(SimpleNamespace(model_type="gpt2"))
    with pytest.raises(ExportError, match="rope scaling 'llama3'"):
        check_supported(SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "llama3"}))


def test_pre_tokenizer_names(small_model, tokenizer):
    from tunesmith.export.gguf import pre_tokenizer_type

    assert pre_tokenizer_type(small_model[1]) == "gpt2"
    assert pre_tokenizer_type(tokenizer) == "gpt2"


def test_modelfile_for_chatml(small_model):
    from tunesmith.export.ollama import modelfile, preferred_gguf

    text = modelfile("m-q8_0.gguf", small_model[1])
    assert text.splitlines()[1] == "FROM ./m-q8_0.gguf"
    assert '{{- if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert text.rstrip().endswith('PARAMETER stop "<|im_end|>"')
    assert preferred_gguf(["a-f16.gguf", "a-q8_0.gguf"]) == "a-q8_0.gguf"
