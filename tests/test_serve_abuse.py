"""Server abuse (issue 8, part 3): every malformed request gets its 4xx in OpenAI's error shape, and the next good one works.

The cases live in bench/serve_load.py (`abuse_cases`), which also mixes them into the load run.
Unknown fields are accepted and ignored (OpenAI's SDKs send fields older servers do not know);
wrong types are refused, never coerced ("10" is not a number, true is not 1).
"""

from __future__ import annotations

import json

import pytest

from load_helpers import KEY, LIMITS, bench, serving

CASES = bench().abuse_cases("run-a", LIMITS["max_tokens_limit"], LIMITS["max_body_bytes"])
GOOD = {**bench().GOOD, "model": "run-a"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("abuse")) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(timeout=60) as client:
        yield client


def _good(http, server) -> dict:
    r = http.post(f"{server.url}/v1/chat/completions", json=GOOD, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_request_gets_its_4xx_and_the_server_goes_on(case, server, http):
    status, error = bench().send_abuse(http, server.url, case, KEY)
    assert (status, error is not None) == (case.status, True), f"{case.name}: HTTP {status} {error}"
    assert "Traceback" not in error["message"] and len(error["message"]) < 2000
    assert _good(http, server)["choices"][0]["finish_reason"] in ("stop", "length")


def test_error_fields_name_the_problem(server, http):
    def error(case_name):
        return bench().send_abuse(http, server.url, next(c for c in CASES if c.name == case_name), KEY)[1]

    assert error("bad json")["code"] == "invalid_json"
    assert error("max_tokens negative")["param"] == "max_tokens"
    assert error("max_tokens numeric string")["param"] == "max_tokens"
    assert error("seed past 64 bits")["param"] == "seed"
    assert error("model ../")["code"] == "invalid_model"
    assert error("model unknown")["code"] == "model_not_found"
    assert error("API key wrong")["code"] == "invalid_api_key"
    assert error("body over the limit")["code"] == "body_too_large"
    assert "not valid Unicode" in error("lone surrogate in content")["message"]
    assert error("prompt longer than the context")["code"] == "context_length_exceeded"


def test_a_huge_body_sent_in_chunks_is_refused_too(server, http):
    def chunks():  # no Content-Length: the limit must hold while the body arrives
        yield b'{"model": "run-a", "messages": [{"role": "user", "content": "'
        for _ in range(LIMITS["max_body_bytes"] // 1000 + 1):
            yield b"x" * 1000
        yield b'"}]}'

    r = http.post(f"{server.url}/v1/chat/completions", content=chunks(),
                  headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    _good(http, server)


def test_unknown_fields_are_ignored(server, http):
    # logit_bias is not unknown: asking for it is refused (see the abuse cases); empty, it asks for nothing
    body = {**GOOD, "frobnicate": True, "logit_bias": {}, "user": "u1",
            "messages": [{"role": "user", "content": GOOD["messages"][0]["content"], "name": "x", "extra": [1]}]}
    r = http.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"] == _good(http, server)["choices"][0]["message"]  # greedy: same answer


def test_bad_requests_in_a_stream_are_refused_before_it_starts(server, http):
    body = json.dumps({**GOOD, "stream": True, "max_tokens": -1})
    r = http.post(f"{server.url}/v1/chat/completions", content=body,
                  headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "max_tokens"
