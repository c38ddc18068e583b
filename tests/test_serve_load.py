"""Server under load (issue 8, part 3; issue 13): 32 concurrent clients, half of them streaming, for a bounded time, bad requests mixed in.

Zero 5xx, every stream ends with `data: [DONE]`, every malformed request still gets its 4xx, and
the clients stop by themselves. The figures are printed (pytest -s shows them); bench/serve_load.py
runs the same load for longer, or on a real model.
"""

from __future__ import annotations

import time

import pytest

from load_helpers import KEY, LIMITS, bench, serving

CLIENTS, SECONDS = 32, 8.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("load")) as srv:
        yield srv


def test_32_clients_streaming_and_not_with_abuse_alongside(server):
    import httpx

    load = bench()
    abuse = load.abuse_cases("run-a", LIMITS["max_tokens_limit"], LIMITS["max_body_bytes"])
    started = time.monotonic()
    result = load.run_load(server.url, ["run-a", "base"], clients=CLIENTS, seconds=SECONDS, max_tokens=12,
                           api_key=KEY, abuse=abuse, timeout=60)
    print("\n" + load.report(result))
    assert result.hung == 0 and time.monotonic() - started < SECONDS + 60  # the clients stopped by themselves
    assert result.server_errors == 0, result.status
    assert result.failures == []
    assert result.completed == result.requests >= CLIENTS  # every client finished at least one stream
    assert set(result.status) == {200}
    assert result.abuse_sent >= 10 and result.abuse_wrong == []
    assert result.percentile(50) <= result.percentile(95) < 60
    # ...and the server still answers, with nothing left queued
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**load.GOOD, "model": "base"},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200
    health = httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    assert health["queued"] == 0
