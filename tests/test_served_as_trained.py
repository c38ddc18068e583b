"""Issue 14: a run is served and exported the way it was trained: its system prompt and chat template
are the defaults for serve, chat, generate and every export; exports name their base portably."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TOKENIZER_DIR
from deploy_helpers import build_small_vocab_model, make_lora_run

SYSTEM = "You answer as the Acme help desk, in one sentence."
ROW = {"prompt": "How do I reset my password?", "completion": "Open settings and choose reset password."}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("served")
    run = make_lora_run(build_small_vocab_model(root / "base"), root / "run-sys")
    with (run / "config.yaml").open("a", encoding="utf-8") as f:
        f.write(f"data:\n  system: {json.dumps(SYSTEM)}\n")
    return run


def _training_ids(run: Path, row: dict) -> tuple[list[int], list[dict]]:
    """The training path: the raw row normalised with data.system, rendered by the run's own tokenizer."""
    from tunesmith.data.formats import normalise
    from tunesmith.data.render import render_example
    from tunesmith.models.load import load_tokenizer

    example = normalise(row, "prompt-completion", 1, system=SYSTEM).example
    return render_example(example, load_tokenizer(run / "final")).input_ids, example["messages"]


def test_serve_and_chat_prompt_a_run_as_training_rendered_it(run_dir):
    from tunesmith.serve.chat import ChatSession
    from tunesmith.serve.engine import Engine

    trained, messages = _training_ids(run_dir, ROW)
    engine = Engine.load([str(run_dir)], device="cpu")
    prompt = engine.chat_prompt("run-sys", [{"role": "user", "content": ROW["prompt"]}])
    tok = engine.slot("run-sys").tokenizer
    assert trained[:len(prompt)] == prompt  # the served prompt is the trained row up to the answer...
    assert tok.decode(trained[len(prompt):]) == messages[-1]["content"] + "<|im_end|>\n"  # ...which follows it
    assert SYSTEM in tok.decode(prompt)
    session = ChatSession(engine, "run-sys")
    session.history.append({"role": "user", "content": ROW["prompt"]})
    assert engine.chat_prompt("run-sys", session.messages()) == prompt
    own = engine.chat_prompt("run-sys", [{"role": "system", "content": "Be terse."}, messages[1]])
    text = tok.decode(own)
    assert "Be terse." in text and SYSTEM not in text and "SmolLM" not in text


def test_generate_takes_a_run_and_its_system_prompt(run_dir):
    from tunesmith.data.render import render_prompt
    from tunesmith.runs.deliverable import resolve

    source = resolve(str(run_dir))
    assert source.system == SYSTEM
    _, tok = source.load(device="cpu")
    assert SYSTEM in tok.decode(render_prompt([{"role": "user", "content": "hi"}], tok))
    assert resolve(str(run_dir.parent / "base")).system is None  # a plain model keeps its template's default


def test_exports_carry_the_system_prompt_and_name_the_base_portably(run_dir, tmp_path):
    import yaml
    from transformers import AutoTokenizer

    from tunesmith.export import export

    result = export(str(run_dir), "adapter", tmp_path / "adapter", n_prompts=2, max_new_tokens=8)
    out = tmp_path / "adapter"
    tok = AutoTokenizer.from_pretrained(str(out))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>") and result.verification["passed"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base" and str(tmp_path) not in json.dumps(config)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---", 2)[1])
    assert meta == {"base_model": "base", "library_name": "peft", "license": "other",
                    "tags": ["tunesmith", "lora", "adapter"], "pipeline_tag": "text-generation"}
    assert f"system prompt (the chat template's default, as in training): {SYSTEM!r}" in card


def test_base_name_is_the_hub_id_and_license_the_base_readme(tmp_path):
    from tunesmith.export.base import base_model
    from tunesmith.runs.deliverable import Deliverable

    folder = tmp_path / "SmolLM2-135M-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                    "torch_dtype": "bfloat16"}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# SmolLM2\n")
    source = Deliverable(name="r", kind="lora", base_spec=str(folder), base_folder=folder,
                         manifest={"base_model": str(folder)})
    base = base_model(source)
    assert (base.name, base.license, base.dtype) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", "bfloat16")
    store_named = Deliverable(name="r", kind="lora", base_spec=str(tmp_path), base_folder=tmp_path,
                              manifest={"base_model": "smollm2-135m-instruct"})
    assert (base_model(store_named).name, base_model(store_named).license) == ("smollm2-135m-instruct", "other")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("bf16")
    base = build_small_vocab_model(root / "base")
    AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).to(torch.bfloat16).save_pretrained(str(base))
    return make_lora_run(base, root / "run-bf16")


def test_merged_export_keeps_the_base_dtype_unless_told(bf16_run, tmp_path):
    import yaml

    from tunesmith.export import export

    result = export(str(bf16_run), "merged", tmp_path / "bf16", n_prompts=2, max_new_tokens=8)
    check = result.verification["checks"][0]
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert check["dtype"] == "bfloat16" and check["weights_exact"] is True
    assert check["status"] in ("match", "close") and result.verification["passed"]  # rounded: 'close' at worst
    meta = yaml.safe_load((tmp_path / "bf16" / "README.md").read_text().split("---", 2)[1])
    assert meta["library_name"] == "transformers" and meta["tags"] == ["tunesmith", "lora", "merged"]
    size16 = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    wide = export(str(bf16_run), "merged", tmp_path / "f32", n_prompts=2, max_new_tokens=8, dtype="float32")
    assert wide.verification["checks"][0]["status"] == "match" and wide.verification["checks"][0]["dtype"] == "float32"
    assert (tmp_path / "f32" / "model.safetensors").stat().st_size > 1.9 * size16


def test_dtype_is_refused_where_it_does_not_apply(bf16_run, tmp_path):
    from tunesmith.errors import ExportError
    from tunesmith.export import export

    with pytest.raises(ExportError, match="--dtype applies to the merged export"):
        export(str(bf16_run), "adapter", tmp_path / "a", dtype="bfloat16")
    with pytest.raises(ExportError, match="unknown dtype 'int8'"):
        export(str(bf16_run), "merged", tmp_path / "b", dtype="int8")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_templates_that_refuse_a_system_role_get_it_folded_in_training_and_serving():
    from transformers import AutoTokenizer

    from tunesmith.data.render import render, render_prompt, with_system, with_system_template
    from tunesmith.errors import DataError

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    gemma = (Path(__file__).parent / "assets" / "templates" / "google-gemma-2-2b-it.jinja").read_text()
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    tok.chat_template = gemma
    trained = render(with_system(turns, SYSTEM), tok).input_ids
    assert f"<start_of_turn>user\n{SYSTEM}\n\nhi<end_of_turn>" in tok.decode(trained)
    with_system_template(tok, SYSTEM)
    assert render(turns, tok).input_ids == trained
    prompt = render_prompt(turns[:1], tok)
    assert trained[:len(prompt) - 3] == prompt[:-3]  # same up to the generation header
    with pytest.raises(DataError, match="^the chat template refused a conversation with roles assistant: "
                                        "Conversation roles must alternate"):
        render_prompt([{"role": "assistant", "content": "x"}], tok)


def test_the_prelude_keeps_any_system_text_intact():
    from transformers import AutoTokenizer

    from tunesmith.data.render import render_prompt, template_system, with_system, with_system_template

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    plain = tok.chat_template
    tricky = 'Quote " and \\\\ back, %} {{ x }} {% if %}\nnew line, tab\t, émoji 😀'
    want = render_prompt(with_system([{"role": "user", "content": "hi"}], tricky), tok)
    with_system_template(tok, tricky)
    assert template_system(tok.chat_template) == tricky
    assert render_prompt([{"role": "user", "content": "hi"}], tok) == want
    with_system_template(tok, "second")  # a later bake replaces the earlier prelude
    assert tok.chat_template.count("tunesmith: end") == 1 and template_system(tok.chat_template) == "second"
    with_system_template(tok, None)
    assert tok.chat_template == plain


def test_cli_export_dtype_and_a_refused_chat_are_one_line(bf16_run, tmp_path):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app
    from tunesmith.serve.chat import ChatSession
    from tunesmith.serve.engine import Engine

    bad = CliRunner().invoke(app, ["export", str(bf16_run), "--format", "adapter", "--dtype", "float16",
                                   "--out", str(tmp_path / "a")])
    assert bad.exit_code != 0 and "--dtype applies to the merged export, not adapter" in str(bad.exception)
    engine = Engine.load([str(bf16_run)], device="cpu")
    engine.slot("run-bf16").tokenizer.chat_template = (
        Path(__file__).parent / "assets" / "templates" / "google-gemma-2-2b-it.jinja").read_text()
    session = ChatSession(engine, "run-bf16", max_tokens=2)
    session.history = [{"role": "user", "content": "a"}]  # two user turns in a row: the template refuses
    reply = "".join(session.send("b"))
    assert reply.startswith("(the chat template refused a conversation with roles user, user: Conversation roles")
    assert session.history == [{"role": "user", "content": "a"}]
