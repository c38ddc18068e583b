"""The OpenAI-compatible server, through the real `openai` client, on a free port chosen at run time."""

from __future__ import annotations

import json
import threading
import time

import pytest

from deploy_helpers import build_small_vocab_model, make_lora_run

KEY = "test-key"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two LoRA runs on one small base, plus the base itself, behind a server with an API key."""
    import torch

    from tunesmith.config import ServeConfig
    from tunesmith.serve.app import create_app
    from tunesmith.serve.engine import Engine, Worker
    from tunesmith.serve.server import start_in_thread

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    base = build_small_vocab_model(root / "base")
    runs = [make_lora_run(base, root / name, seed=seed) for name, seed in (("run-a", 1), ("run-b", 2))]
    engine = Engine.load([str(r) for r in runs], base=str(base))
    worker = Worker(engine)
    jobs, received, pace = [], [], {"delay": 0.0}
    submit = worker.submit

    def recording_submit(req, sink):
        """Keep each job and the events it got; `pace` slows the worker down (it calls the sink)."""
        got = []
        received.append(got)

        def sink_(event):
            got.append(event)
            time.sleep(pace["delay"])
            sink(event)

        jobs.append(submit(req, sink_))
        return jobs[-1]

    worker.submit = recording_submit
    app = create_app(engine, ServeConfig(api_key=KEY, max_tokens_limit=500, max_body_bytes=20_000), worker)
    server = start_in_thread(app)
    yield {"engine": engine, "url": server.url, "jobs": jobs, "received": received, "pace": pace, "worker": worker}
    server.stop()
    worker.close()


@pytest.fixture
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _greedy(engine, model: str, max_tokens: int, messages=QUESTION) -> str:
    from tunesmith.serve.engine import GenerationRequest

    return engine.complete(GenerationRequest(model, engine.chat_prompt(model, messages), max_tokens, 0.0)).text


def test_models_are_the_runs_and_the_base(client):
    assert [m.id for m in client.models.list().data] == ["run-a", "run-b", "base"]


def test_chat_answers_through_each_adapter_without_reloading(client, served):
    answers = {}
    for model in ("run-a", "run-b", "base", "run-a"):
        r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
        assert r.choices[0].message.content == _greedy(served["engine"], model, 12)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens > 0
        answers.setdefault(model, r.choices[0].message.content)
        assert answers[model] == r.choices[0].message.content  # switching back gives the same answer
    assert len(set(answers.values())) == 3  # each adapter (and the base) answers differently


def test_streaming_gives_the_same_text_as_a_plain_answer(client):
    plain = client.chat.completions.create(model="run-b", messages=QUESTION, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model="run-b", messages=QUESTION, max_tokens=20, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_completions_stream_and_not(client):
    plain = client.completions.create(model="base", prompt="The sea is", max_tokens=10, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="base", prompt="The sea is", max_tokens=10, temperature=0, stream=True))
    assert plain.usage.completion_tokens == 10 and plain.choices[0].finish_reason == "length"
    assert streamed == plain.choices[0].text


def test_seed_repeats_a_sampled_answer_and_stop_cuts_it(client, served):
    def ask(**kw):
        return client.chat.completions.create(model="run-a", messages=QUESTION, max_tokens=16, **kw).choices[0]

    assert ask(temperature=1.0, top_p=0.9, seed=7).message.content == ask(temperature=1.0, top_p=0.9, seed=7).message.content
    full = _greedy(served["engine"], "run-a", 16)
    stop = full[6:9]
    cut = ask(temperature=0, stop=[stop])
    assert cut.message.content == full[:full.index(stop)] and cut.finish_reason == "stop"


def test_client_mistakes_get_openai_errors(served):
    import httpx

    url, auth = served["url"], {"Authorization": f"Bearer {KEY}"}

    def post(body, headers=auth, raw=None):
        r = httpx.post(f"{url}/v1/chat/completions", headers=headers, timeout=30,
                       **({"content": raw} if raw is not None else {"json": body}))
        return r.status_code, r.json()["error"]

    ok = {"model": "run-a", "messages": QUESTION, "max_tokens": 4}
    status, err = post({**ok, "model": "nope"})
    assert status == 404 and err["code"] == "model_not_found" and "run-a, run-b, base" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}
    assert post({**ok, "model": "../base"})[0] == 400
    assert post({**ok, "model": "a/b"})[1]["code"] == "invalid_model"
    malformed = post(None, headers={**auth, "Content-Type": "application/json"}, raw=b'{"model": "run-a", "messages": [')
    assert malformed[0] == 400 and malformed[1]["code"] == "invalid_json"
    for bad in (-1, 0, 501):
        status, err = post({**ok, "max_tokens": bad})
        assert (status, err["param"]) == (400, "max_tokens")
    assert post({**ok, "temperature": 3})[0] == 400
    assert post({"model": "run-a", "messages": []})[0] == 400
    assert post(ok, headers={})[0] == 401
    assert post(ok, headers={"Authorization": "Bearer wrong"})[1]["code"] == "invalid_api_key"
    assert post({**ok, "messages": [{"role": "user", "content": "x" * 30_000}]})[0] == 413
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"  # no key needed to check liveness


def test_concurrent_clients_all_get_their_own_answer(client, served):
    models = ["run-a", "run-b", "base", "run-b", "run-a", "base"]
    expected = {m: _greedy(served["engine"], m, 10) for m in set(models)}
    got: dict[int, str] = {}

    def ask(i: int, model: str) -> None:
        r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=10, temperature=0)
        got[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {i: expected[m] for i, m in enumerate(models)}


def test_a_client_leaving_mid_stream_stops_only_its_own_generation(client, served):
    import httpx

    body = {"model": "run-a", "messages": QUESTION, "max_tokens": 400, "temperature": 0, "stream": True}
    before = len(served["jobs"])
    served["pace"]["delay"] = 0.005  # 400 tokens would take >= 2 s: the disconnect comes long before
    with httpx.stream("POST", f"{served['url']}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["choices"][0]["delta"]["role"] == "assistant"
    # the connection is closed here; the other client's answer is unaffected
    served["pace"]["delay"] = 0.0
    other = client.chat.completions.create(model="run-b", messages=QUESTION, max_tokens=10, temperature=0)
    assert other.choices[0].message.content == _greedy(served["engine"], "run-b", 10)
    leaver = served["jobs"][before]
    deadline = time.monotonic() + 10
    while not leaver.cancelled.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    while served["worker"].active and time.monotonic() < deadline:
        time.sleep(0.01)
    assert leaver.cancelled.is_set() and served["worker"].active == 0
    events = served["received"][before]
    assert len(events) < 300 and not any(e.finish_reason for e in events)  # stopped early, never finished


def test_binding_rules():
    from tunesmith.config import ServeConfig
    from tunesmith.errors import ServeError
    from tunesmith.serve.server import bind, exposure_warning

    assert exposure_warning(ServeConfig()) is None
    assert exposure_warning(ServeConfig(host="0.0.0.0", api_key="k")) is None
    assert "without an API key" in exposure_warning(ServeConfig(host="0.0.0.0"))
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
