"""Exports of a (fake) LoRA run: adapter, merged, GGUF; each reloaded by plain libraries and verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy_helpers import build_small_vocab_model, make_full_run, make_lora_run
from tunesmith.errors import ExportError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    base = build_small_vocab_model(root / "base")
    return make_lora_run(base, root / "run-lora")


def test_adapter_export_loads_with_plain_peft(run_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export import export

    result = export(str(run_dir), "adapter", tmp_path / "adapter")
    check = result.verification["checks"][0]
    assert (check["status"], check["exact_matches"], check["prompts"]) == ("match", 4, 4)
    assert check["chat_template_match"] and check["max_abs_logit_diff"] == 0.0
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "verification.json",
            "tokenizer.json"} <= set(result.files)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    base_dir = (run_dir.parent / "base").resolve()
    assert config["base_model_name_or_path"] == "base"  # a portable name, never this machine's folder
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(tmp_path / "adapter"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "adapter"))
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                add_generation_prompt=True)["input_ids"]])
    out = model.generate(ids, max_new_tokens=32, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == result.verification["reference_answers"][0]
    card = (tmp_path / "adapter" / "README.md").read_text()
    for heading in ("## Base model", "## Fine-tuning", "## Data", "## Evaluation", "## Verification", "## Use",
                    "## Intended use and limitations"):
        assert heading in card
    assert "- method: lora" in card and "- train.lr: 0.001" in card and "4/4 greedy answers identical" in card
    assert f"- base weights (local): `{base_dir}`" in card and "- base weights sha256: `" + "0" * 64 in card


def test_merged_export_loads_with_plain_transformers(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tunesmith.export import export

    result = export(str(run_dir), "merged", tmp_path / "merged", n_prompts=3, max_new_tokens=16)
    check = result.verification["checks"][0]
    assert (check["status"], check["exact_matches"], check["loader"]) == ("match", 3, "transformers.AutoModelForCausalLM")
    assert check["max_abs_logit_diff"] < 1e-3  # merging folds B @ A into W: float rounding only
    out = tmp_path / "merged"
    assert AutoTokenizer.from_pretrained(str(out)).chat_template.startswith("{% for message in messages %}")
    assert GenerationConfig.from_pretrained(str(out)).eos_token_id == [2]  # <|im_end|> ends the turn
    assert "lora" not in " ".join(AutoModelForCausalLM.from_pretrained(str(out)).state_dict())


def test_gguf_export_of_a_lora_run(run_dir, tmp_path):
    from tunesmith.export import export

    result = export(str(run_dir), "gguf", tmp_path / "gguf", quants=("f16", "q8_0"), n_prompts=2, max_new_tokens=16)
    assert {"run-lora-f16.gguf", "run-lora-q8_0.gguf", "Modelfile", "README.md", "verification.json"} <= set(result.files)
    by_quant = {c["quant"]: c for c in result.verification["checks"] if c["loader"].startswith("transformers")}
    assert by_quant["f16"]["status"] == "match" and by_quant["f16"]["exact_matches"] == 2
    # q8_0 rounds the weights, so answers may drift; the file must still hold exactly the rounded weights
    assert by_quant["q8_0"]["status"] in ("match", "close") and by_quant["q8_0"]["weights_exact"]
    assert by_quant["f16"]["max_weight_diff"] == 0.0 and by_quant["q8_0"]["max_weight_diff"] == 0.0
    assert all(c["chat_template_match"] and c["prompt_ids_match"] for c in by_quant.values())
    assert "FROM ./run-lora-q8_0.gguf" in (tmp_path / "gguf" / "Modelfile").read_text()
    llama = [c for c in result.verification["checks"] if c["loader"] == "llama-cpp-python"]
    assert len(llama) == 2 and all(c["status"] in ("skipped", "match", "close") for c in llama)


def test_a_gguf_layout_bug_fails_verification(run_dir, tmp_path, monkeypatch):
    """Without llama.cpp's Q/K permutation the answers could still be 'close' by luck; the weights cannot."""
    from tunesmith.export import export, gguf

    monkeypatch.setattr(gguf, "permute_qk", lambda weights, n_head: weights)
    with pytest.raises(ExportError, match="did not verify through transformers \\(gguf_file=\\)"):
        export(str(run_dir), "gguf", tmp_path / "g", quants=("q8_0",), n_prompts=1, max_new_tokens=4)
    assert not (tmp_path / "g").exists()


def test_refusals_leave_nothing_behind(run_dir, tmp_path, monkeypatch):
    from tunesmith.export import export, verify

    full = make_full_run(run_dir.parent / "base", tmp_path / "run-full")
    with pytest.raises(ExportError, match="full fine-tune: it has no adapter .*--format merged"):
        export(str(full), "adapter", tmp_path / "a")
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        export(str(run_dir), "onnx", tmp_path / "b")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export(str(run_dir), "merged", tmp_path / "taken")
    # a reload that answers differently is a failed export, and no folder appears
    real = verify.compare
    monkeypatch.setattr(verify, "compare", lambda ref, cand: {**real(ref, cand), "exact_matches": 0, "status": "differs"})
    with pytest.raises(ExportError, match="did not verify through transformers.AutoModelForCausalLM"):
        export(str(run_dir), "merged", tmp_path / "c", n_prompts=1, max_new_tokens=4)
    assert not (tmp_path / "c").exists() and not any(p.name.startswith(".c.") for p in tmp_path.iterdir())


def test_cli_export_prints_the_verification(run_dir, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    runner = CliRunner()
    ok = runner.invoke(app, ["export", str(run_dir), "--format", "merged", "--out", str(tmp_path / "m"),
                             "--verify-prompts", "1", "--verify-tokens", "4", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout[ok.stdout.index("{"):])["verification"]["passed"] is True
    bad = runner.invoke(app, ["export", str(run_dir), "--format", "gguf", "--quant", "q2", "--out", str(tmp_path / "g")])
    assert bad.exit_code != 0 and "unknown GGUF quantization q2" in str(bad.exception)


def test_overwrite_replaces_only_a_previous_export_and_never_a_kept_folder(run_dir, tmp_path, monkeypatch):
    """Issue 12: `export --overwrite` replaced any folder (the working folder, the run, the base model...)."""
    import os
    import stat

    from tunesmith.export import export

    def export_to(out, **kw):
        return export(str(run_dir), "adapter", out, n_prompts=1, max_new_tokens=4, **kw)

    out = tmp_path / "deploy"
    out.mkdir()  # an empty folder loses nothing: no --overwrite needed
    result = export_to(out)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["adapter_model.safetensors"] == 0o666 & ~umask  # safetensors writes 0600: unreadable to a server
    assert set(modes.values()) == {0o666 & ~umask} and stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert result.verification["created_by"] == "tunesmith" and set(result.verification["files"]) == set(modes)
    export_to(out, overwrite=True)  # a previous export: replaced
    (out / "serve.sh").write_text("my script")
    with pytest.raises(ExportError, match=r"deploy holds files the export did not write: serve.sh"):
        export_to(out, overwrite=True)
    assert (out / "serve.sh").read_text() == "my script"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    with pytest.raises(ExportError, match=r"mine is not a tunesmith export .*replaces only a previous export"):
        export_to(mine, overwrite=True)
    old = tmp_path / "old"
    old.mkdir()
    (old / "verification.json").write_text(json.dumps({"format": "adapter", "checks": []}))
    with pytest.raises(ExportError, match="an export by an older tunesmith, which did not record its files"):
        export_to(old, overwrite=True)
    home, cwd = tmp_path / "home", tmp_path / "work"
    cwd.mkdir()
    (cwd / "src.py").write_text("print('mine')")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TUNESMITH_HOME", str(home / ".tunesmith"))
    (home / ".tunesmith" / "models").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    for target, why in [(cwd, "is the current folder"), (Path("."), "is the current folder"),
                        (tmp_path, "holds the current folder"), (home, "is your home folder"),
                        (home / ".tunesmith" / "models", "is inside \\$TUNESMITH_HOME"),
                        (run_dir, "is run 'run-lora'"), (run_dir.parent / "base", "is the base model"),
                        (run_dir.parent, "holds the base model")]:
        with pytest.raises(ExportError, match=f"--out .* {why} .*: an export never replaces it"):
            export_to(target, overwrite=True)
    assert (cwd / "src.py").is_file() and (run_dir / "manifest.json").is_file()
    assert (run_dir.parent / "base" / "config.json").is_file()


@pytest.mark.slow
def test_embedded_model_merged_export_verifies(tmp_path):
    """The real SmolLM2 saved as a merged folder, reloaded by plain transformers: the same greedy answers."""
    from tunesmith.export import export

    result = export("smollm2-135m-instruct", "merged", tmp_path / "out", n_prompts=2, max_new_tokens=12)
    check = result.verification["checks"][0]
    assert (check["status"], check["exact_matches"], check["chat_template_match"]) == ("match", 2, True)
    assert "Paris" in result.verification["reference_answers"][0]
