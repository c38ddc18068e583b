"""A GGUF export served on llama.cpp behind the same OpenAI-compatible API (the real `openai` client)."""

from __future__ import annotations

import pytest

from deploy_helpers import make_lora_run
from tunesmith.errors import ServeError

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gguf_export(tmp_path_factory):
    """A LoRA run on a tiny llama with SmolLM2's real tokenizer, exported as q8_0 GGUF."""
    from conftest import build_tiny_model
    from tunesmith.export import export

    root = tmp_path_factory.mktemp("gguf-serve")
    run = make_lora_run(build_tiny_model(root / "base"), root / "run-lora")
    export(str(run), "gguf", root / "export", quants=("q8_0",), n_prompts=1, max_new_tokens=8)
    return {"run": run, "export": root / "export"}


def test_a_gguf_export_is_served_on_llama_cpp_under_its_run_name(gguf_export):
    import llama_cpp
    from openai import OpenAI

    from tunesmith.config import ServeConfig
    from tunesmith.models.llama_cpp import LlamaCppEngine
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine, Worker
    from tunesmith.serve.server import start_in_thread

    engine = Engine.load([str(gguf_export["export"])])
    assert engine.names == ["run-lora"] and isinstance(engine.slot("run-lora").runner, LlamaCppEngine)
    prompt = engine.chat_prompt("run-lora", QUESTION)
    # the same ids, greedy, straight through llama-cpp-python: the engine adds nothing of its own
    llm = llama_cpp.Llama(model_path=str(engine.slot("run-lora").source), n_ctx=512, verbose=False)
    expected = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        expected.append(int(token))
        if len(expected) == 12 or token in engine.slot("run-lora").runner.stop_ids:
            break
    worker = Worker(engine, max_queue=4)
    server = start_in_thread(create_app(engine, ServeConfig(api_key="k"), worker))
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["run-lora"]
        reply = client.chat.completions.create(model="run-lora", messages=QUESTION, max_tokens=12, temperature=0)
        stream = client.chat.completions.create(model="run-lora", messages=QUESTION, max_tokens=12, temperature=0,
                                                stream=True)
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    finally:
        server.stop()
        worker.close()
    text = engine.slot("run-lora").tokenizer.decode(expected, skip_special_tokens=True)
    assert reply.choices[0].message.content == streamed == text.strip() or reply.choices[0].message.content == text
    assert reply.usage.completion_tokens == len(expected)


def test_engine_choice_and_refusals(gguf_export):
    from tunesmith.models.llama_cpp import LlamaCppEngine
    from tunesmith.serve.engine import load_slots

    file = next(gguf_export["export"].glob("*.gguf"))
    (slot,) = load_slots([str(file)], None)  # a .gguf file by path: llama.cpp, under the file's stem
    assert slot.name == file.stem and isinstance(slot.runner, LlamaCppEngine) and slot.context_length > 0
    with pytest.raises(ServeError, match="'.*run-lora' is not a GGUF file or export: llama.cpp serves GGUF"):
        load_slots([str(gguf_export["run"])], None, engine="llamacpp")
    with pytest.raises(ServeError, match="unknown engine 'vllm'"):
        load_slots([str(file)], None, engine="vllm")


def test_a_prompt_longer_than_the_context_is_an_error_event_not_a_crash(gguf_export):
    from tunesmith.models.engine import Sampling
    from tunesmith.models.llama_cpp import LlamaCppEngine
    from tunesmith.serve.engine import load_gguf_tokenizer

    file = next(gguf_export["export"].glob("*.gguf"))
    engine = LlamaCppEngine(file, load_gguf_tokenizer(file), n_ctx=64)
    (event,) = list(engine.stream(list(range(100, 200)), Sampling(4)))
    assert event.finish_reason == "error" and "llama.cpp's context holds 64" in event.error
    events = list(engine.stream([1, 9690, 198], Sampling(4)))  # and it goes on serving
    assert events[-1].finish_reason in ("stop", "length")
