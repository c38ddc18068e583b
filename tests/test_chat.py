"""`tunesmith chat`: history, /reset, /system, /exit, streamed answers that match the engine's."""

from __future__ import annotations

import pytest

from deploy_helpers import build_small_vocab_model, make_lora_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chat")
    return make_lora_run(build_small_vocab_model(root / "base"), root / "run-chat")


def test_session_keeps_history_and_obeys_commands(run_dir):
    from tunesmith.serve.chat import ChatSession, run_loop
    from tunesmith.serve.engine import Engine, GenerationRequest

    engine = Engine.load([str(run_dir)])
    session = ChatSession(engine, "run-chat", max_tokens=8)
    lines = iter(["Hello", "List three colours.", "/system Be brief.", "Hello", "/reset", "/nope", "/exit", "never read"])
    out: list[str] = []
    run_loop(session, lambda: next(lines, None), out.append)
    text = "".join(out)
    assert "system prompt set; history cleared" in text and "history cleared" in text
    assert "unknown command /nope" in text and text.rstrip().endswith("bye")
    assert session.done and session.history == [] and session.system == "Be brief."
    # the second answer was generated with the first exchange in its prompt
    first = engine.complete(GenerationRequest("run-chat", engine.chat_prompt("run-chat", [
        {"role": "user", "content": "Hello"}]), 8, 0.0)).text
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": first.strip()},
               {"role": "user", "content": "List three colours."}]
    second = engine.complete(GenerationRequest("run-chat", engine.chat_prompt("run-chat", history), 8, 0.0)).text
    assert text.startswith(first + "\n" + second + "\n")


def test_cli_chat_streams_until_exit(run_dir):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    result = CliRunner().invoke(app, ["chat", str(run_dir), "--max-new-tokens", "4"], input="Hello\n/exit\n")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("chatting with run-chat") and result.output.rstrip().endswith("bye")
    bad = CliRunner().invoke(app, ["chat", "no-such-run-or-model"])
    assert bad.exit_code != 0 and "neither a run nor a model" in str(bad.exception)
