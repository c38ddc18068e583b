"""The Modelfile's Go templates render what the real Jinja chat templates render, with and without a system prompt.

Each real template (tests/assets/templates, see PROVENANCE.md) is put on the SmolLM2 tokenizer,
with a run's system prompt baked in as tunesmith exports do. The Jinja side is transformers'
apply_chat_template; the Go side is tests/go_template.py (a subset renderer checked against Go's
documented semantics, not Go itself) fed the way Ollama feeds a template: `.System` is the
request's system message, else the Modelfile's SYSTEM line; `.Messages` are the turns. What is
compared: the full prompt text of a 2-turn conversation ending in the generation prompt, less
the leading BOS token (llama.cpp adds that when it tokenizes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TOKENIZER_DIR
from go_template import render as render_go

TEMPLATES = Path(__file__).parent / "assets" / "templates"
CASES = {  # template file -> the family the Modelfile must pick
    TOKENIZER_DIR / "chat_template.jinja": "chatml",
    TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja": "chatml",
    TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3.1",
    TEMPLATES / "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
    TEMPLATES / "google-gemma-2-2b-it.jinja": "gemma",
    TEMPLATES / "microsoft-Phi-3.5-mini-instruct.jinja": "phi3",
}
TURNS = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
         {"role": "user", "content": "And 3+3?"}]
RUN_SYSTEM = "Answer in one short sentence."


def _tokenizer(template_file: Path, system: str | None):
    from transformers import AutoTokenizer

    from tunesmith.data.render import with_system_template

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    tok.chat_template = template_file.read_text(encoding="utf-8")
    with_system_template(tok, system)
    return tok


def _jinja(tok, messages) -> str:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    writes_bos = "bos_token" in tok.chat_template  # SmolLM2's BOS is <|im_start|>: only strip one the template wrote
    return text[len(tok.bos_token):] if writes_bos and text.startswith(tok.bos_token) else text


def _ollama(tok, messages) -> str:
    from tunesmith.export.ollama import default_system, go_template

    own = [m["content"] for m in messages if m["role"] == "system"]
    turns = [{"Role": m["role"], "Content": m["content"]} for m in messages if m["role"] != "system"]
    return render_go(go_template(tok), {"System": own[0] if own else default_system(tok), "Messages": turns})


@pytest.mark.parametrize("template_file", list(CASES), ids=lambda p: p.stem)
@pytest.mark.parametrize("run_system", [RUN_SYSTEM, None], ids=["run-system", "no-run-system"])
def test_go_template_renders_like_the_jinja_template(template_file, run_system):
    from tunesmith.export.ollama import family

    tok = _tokenizer(template_file, run_system)
    assert family(tok.chat_template) == CASES[template_file]
    for messages in (TURNS, [{"role": "system", "content": "Reply in French."}] + TURNS):
        assert _ollama(tok, messages) == _jinja(tok, messages)
    if run_system:
        assert RUN_SYSTEM in _jinja(tok, TURNS)


def test_plain_template_go_matches_and_unknown_families_are_left_to_the_gguf():
    from transformers import AutoTokenizer

    from tunesmith.data.render import PLAIN_TEMPLATE, with_system_template
    from tunesmith.export.ollama import go_template, modelfile

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    tok.chat_template = PLAIN_TEMPLATE
    with_system_template(tok, RUN_SYSTEM)
    assert _ollama(tok, TURNS) == _jinja(tok, TURNS)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert go_template(tok) is None
    assert "Ollama reads it from the GGUF" in modelfile("m-f16.gguf", tok)


def test_modelfile_system_line_is_the_run_system_prompt():
    from tunesmith.export.ollama import modelfile

    text = modelfile("m-q8_0.gguf", _tokenizer(TOKENIZER_DIR / "chat_template.jinja", RUN_SYSTEM))
    assert f'SYSTEM """{RUN_SYSTEM}"""' in text and "SmolLM" not in text
    plain_run = modelfile("m-q8_0.gguf", _tokenizer(TOKENIZER_DIR / "chat_template.jinja", None))
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in plain_run
    gemma = modelfile("m-q8_0.gguf", _tokenizer(TEMPLATES / "google-gemma-2-2b-it.jinja", RUN_SYSTEM))
    assert f'SYSTEM """{RUN_SYSTEM}"""' in gemma and 'PARAMETER stop "<end_of_turn>"' not in gemma  # not in this vocab
