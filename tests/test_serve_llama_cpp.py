"""A GGUF export served on llama.cpp behind the same OpenAI-compatible API (the real `openai` client),
and several requests decoded as sequences of one llama.cpp context, each answered as it is alone."""

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


@pytest.fixture(scope="module")
def gguf(gguf_export):
    """(the exported file, its tokenizer): reading the tokenizer from the GGUF takes seconds, so once."""
    from tunesmith.serve.engine import load_gguf_tokenizer

    file = next(gguf_export["export"].glob("*.gguf"))
    return file, load_gguf_tokenizer(file)


def test_a_gguf_export_is_served_on_llama_cpp_under_its_run_name(gguf_export):
    from openai import OpenAI

    from tunesmith.config import ServeConfig
    from tunesmith.models.llama_cpp import LlamaCppEngine, open_llama
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine, Worker
    from tunesmith.serve.server import start_in_thread

    engine = Engine.load([str(gguf_export["export"])])
    assert engine.names == ["run-lora"] and isinstance(engine.slot("run-lora").runner, LlamaCppEngine)
    prompt = engine.chat_prompt("run-lora", QUESTION)
    # the same ids, greedy, straight through llama-cpp-python: the engine adds nothing of its own
    llm = open_llama(engine.slot("run-lora").source, n_ctx=512, verbose=False)
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


def test_engine_choice_and_refusals(gguf_export, monkeypatch):
    import llama_cpp

    from tunesmith.models.llama_cpp import LlamaCppEngine, _kv_bytes
    from tunesmith.serve.engine import load_slots

    file = next(gguf_export["export"].glob("*.gguf"))
    (slot,) = load_slots([str(file)], None, max_batch=3)  # a .gguf file by path: llama.cpp, under the file's stem
    assert slot.name == file.stem and isinstance(slot.runner, LlamaCppEngine) and slot.context_length > 0
    # serve.max_batch is the sequences llama.cpp's context holds, each with the whole context
    assert slot.runner.max_batch == llama_cpp.llama_n_seq_max(slot.runner.model.ctx) == 3
    assert llama_cpp.llama_n_ctx_seq(slot.runner.model.ctx) >= slot.context_length
    (many,) = load_slots([str(file)], None, max_batch=16)  # the default serve.max_batch: the tiny model's 16 fit
    assert many.runner.max_batch == llama_cpp.llama_n_seq_max(many.runner.model.ctx) == 16
    # past the KV budget, fewer sequences (each cache is whole); the others wait in the queue
    per_seq = _kv_bytes(many.runner.model.model, file, many.runner.n_ctx)
    monkeypatch.setattr("tunesmith.models.llama_cpp.KV_BUDGET", 5 * per_seq + 1)
    (few,) = load_slots([str(file)], None, max_batch=16)
    assert few.runner.max_batch == llama_cpp.llama_n_seq_max(few.runner.model.ctx) == 5
    monkeypatch.setattr("tunesmith.models.llama_cpp.KV_BUDGET", 1)  # not even one fits: one, as llama.cpp would
    (one,) = load_slots([str(file)], None, max_batch=16)
    assert one.runner.max_batch == 1
    with pytest.raises(ServeError, match="'.*run-lora' is not a GGUF file or export: llama.cpp serves GGUF"):
        load_slots([str(gguf_export["run"])], None, engine="llamacpp")
    with pytest.raises(ServeError, match="unknown engine 'vllm'"):
        load_slots([str(file)], None, engine="vllm")


def test_a_prompt_longer_than_the_context_is_an_error_event_not_a_crash(gguf):
    from tunesmith.models.engine import Sampling
    from tunesmith.models.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(*gguf, n_ctx=64)
    (event,) = list(engine.stream(list(range(100, 200)), Sampling(4)))
    assert event.finish_reason == "error" and "llama.cpp's context holds 64" in event.error
    events = list(engine.stream([1, 9690, 198], Sampling(4)))  # and it goes on serving
    assert events[-1].finish_reason in ("stop", "length")
    # joining together, the long prompt gets its error and the other its answer
    long, short = engine.generate([list(range(100, 200)), [1, 9690, 198]], Sampling(4))
    assert long.finish_reason == "error" and "llama.cpp's context holds 64" in long.error
    assert short.token_ids == events[-1].token_ids


# ------------------------------------------------------------------ several sequences in one llama.cpp context

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea.", "List three colours",
           "How do I reset my password? Open settings and choose reset password.", "Numbers like 12345"]


def _engine(gguf, **kwargs):
    """One thread: the tiny model gains nothing from more, and on a busy machine ggml's threads wait on each other."""
    from tunesmith.models.llama_cpp import LlamaCppEngine

    return LlamaCppEngine(*gguf, threads=1, **kwargs)


def _prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(text)["input_ids"] for text in PROMPTS]


def _alone(engine, prompts, samplings) -> list[tuple[int, ...]]:
    """Each prompt's generated ids, run by itself on the engine."""
    return [engine.generate([p], s)[0].token_ids for p, s in zip(prompts, samplings)]


def _answers(engine, prompts, samplings, join_at=None, most_active=None) -> list[tuple[int, ...]]:
    """Each prompt's generated ids, prompt i submitted before step join_at[i] (all before the first by default)."""
    join_at = join_at or [0] * len(prompts)
    done: dict[int, tuple[int, ...]] = {}

    def sink(i):
        def take(event):
            if event.finish_reason:
                assert event.finish_reason in ("stop", "length"), event.error
                done[i] = event.token_ids
        return take

    step = 0
    while len(done) < len(prompts):
        for i in [i for i, at in enumerate(join_at) if at == step]:
            engine.submit(prompts[i], samplings[i], sink(i))
        engine.step()
        if most_active is not None:
            most_active.append((engine.active, engine.waiting))
        step += 1
    return [done[i] for i in range(len(prompts))]


def test_concurrent_greedy_answers_are_token_identical_to_each_prompt_alone(gguf):
    from tunesmith.models.engine import Sampling

    engine = _engine(gguf, max_batch=4)
    prompts, greedy = _prompts(gguf[1])[:4], [Sampling(max_tokens=12)] * 4
    alone = _alone(engine, prompts, greedy)
    assert len(set(alone)) == 4 and len(alone[0]) > 4  # answers tell the prompts apart; the first is long
    passes = engine.passes
    assert _answers(engine, prompts, greedy) == alone  # submitted together
    assert engine.passes - passes == max(map(len, alone))  # one pass per token for all four: they shared passes
    assert _answers(engine, prompts, greedy, join_at=[0, 4, 4, 6]) == alone  # joining while the first answers


def test_seeded_sampling_gives_the_same_answer_alone_and_in_a_batch(gguf):
    from tunesmith.models.engine import Sampling

    engine = _engine(gguf, max_batch=4)
    prompts = _prompts(gguf[1])[:4]
    seeded = [Sampling(max_tokens=8, temperature=1.0, seed=10 + i) for i in range(4)]
    alone = _alone(engine, prompts, seeded)
    assert len(set(alone)) == 4
    assert _answers(engine, prompts, seeded) == alone
    assert _answers(engine, prompts, seeded, join_at=[0, 3, 5, 5]) == alone


def test_a_cancelled_request_frees_its_sequence_for_the_next_one(gguf):
    from tunesmith.models.engine import Sampling

    engine = _engine(gguf, max_batch=2)
    prompts, greedy = _prompts(gguf[1]), Sampling(max_tokens=12)
    expected = _alone(engine, prompts[1:3], [greedy] * 2)
    events: dict[str, list] = {"a": [], "b": [], "c": []}
    a = engine.submit(prompts[0], Sampling(max_tokens=100), events["a"].append)
    engine.submit(prompts[1], greedy, events["b"].append)
    for _ in range(3):
        engine.step()
    seq_of = lambda: {row.handle.id: seq for row, seq in engine._seqs.items()}  # noqa: E731 (the engine's own map)
    seq_a = seq_of()[a.id]
    a.cancel()
    c = engine.submit(prompts[2], greedy, events["c"].append)
    engine.step()  # a leaves, c joins in the sequence a held: the only one free with max_batch 2
    assert a.id not in seq_of() and seq_of()[c.id] == seq_a and engine.active == 2
    while engine.busy:
        engine.step()
    assert not any(e.finish_reason for e in events["a"])  # a cancelled request gets no final event
    assert [events[k][-1].token_ids for k in "bc"] == expected  # c's cells start clean: answered as alone


def test_requests_past_max_batch_wait_and_all_complete(gguf):
    from tunesmith.models.engine import Sampling

    engine = _engine(gguf, max_batch=2)
    prompts, greedy = _prompts(gguf[1]), [Sampling(max_tokens=8)] * len(PROMPTS)
    alone = _alone(engine, prompts, greedy)
    seen: list[tuple[int, int]] = []
    assert _answers(engine, prompts, greedy, most_active=seen) == alone
    assert max(active for active, _ in seen) == 2 and max(waiting for _, waiting in seen) == len(PROMPTS) - 2


def test_a_sequence_s_logits_in_a_batch_are_bit_identical_to_alone(gguf):
    """Other sequences' prompts and tokens in the same llama_decode (consecutive ids or not) change no bit."""
    import numpy as np


    engine = _engine(gguf, max_batch=3)  # held: the engine frees its context when it goes
    context = engine.model
    mine, other = _prompts(gguf[1])[0], _prompts(gguf[1])[3]
    first, = context.decode([(0, 0, mine)])
    second, = context.decode([(0, len(mine), [int(first.argmax())])])
    context.forget(0)
    for seq, neighbour in ((0, 1), (0, 2), (2, 0)):
        context.decode([(neighbour, 0, other)])
        joined = context.decode([(neighbour, len(other), [7]), (seq, 0, mine)])[1]  # my prompt beside its token
        then = context.decode([(seq, len(mine), [int(joined.argmax())]), (neighbour, len(other) + 1, [8])])[0]
        assert np.array_equal(joined, first) and np.array_equal(then, second), (seq, neighbour)
        context.forget(seq)
        context.forget(neighbour)


def test_a_prompt_longer_than_one_decode_takes_is_fed_in_pieces(gguf):
    from tunesmith.models.engine import Sampling

    engine = _engine(gguf, max_batch=2)
    prompts, greedy = _prompts(gguf[1])[:2], [Sampling(max_tokens=6)] * 2
    whole = _answers(engine, prompts, greedy)
    engine.model.n_batch = 5  # fewer tokens than either prompt: several llama_decode calls per pass
    assert _answers(engine, prompts, greedy) == whole


def test_a_failed_decode_ends_its_requests_and_the_engine_goes_on(gguf):
    from tunesmith.models.engine import Sampling

    engine = _engine(gguf, max_batch=2)
    prompt = _prompts(gguf[1])[0]
    (expected,) = _alone(engine, [prompt], [Sampling(max_tokens=6)])
    events: list = []
    engine.submit([1, engine.model.n_vocab + 5], Sampling(4), events.append)  # a token llama.cpp refuses
    engine.submit(prompt, Sampling(4), events.append)
    with pytest.raises(RuntimeError, match="llama_decode returned -1"):
        engine.step()
    engine.fail("generation failed")  # what the server's worker does
    assert [e.finish_reason for e in events] == ["error", "error"] and not engine.busy
    assert _alone(engine, [prompt], [Sampling(max_tokens=6)]) == [expected]  # the cache was emptied
