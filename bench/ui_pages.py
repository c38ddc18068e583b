"""The web UI's page timings with 200 runs in the registry, the live-curve latency, and the UI process's RSS.

    python bench/ui_pages.py                 # 200 runs, 20 requests per page
    python bench/ui_pages.py --runs 1000 --repeat 50

Registers fake runs (a manifest, a config and 40 metric lines each, as tests/ui_helpers.py makes
them) and one run with a 500-example compare report in a temporary $TUNESMITH_HOME, builds the app
in this process and times each page through an in-process client (median and worst of --repeat,
after one warm-up); then serves it on a free port and times how long an appended metrics line takes to reach a server-sent-events client.
Targets (issue 16): a page under 300 ms on the 2-core machine, a logged step on the curve within
2 s, the idle UI process under 300 MB RSS. Prints the figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> float:
    """This process's resident set size now (Linux /proc), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def time_pages(client, paths: list[str], repeat: int) -> dict[str, dict[str, float]]:
    out = {}
    for path in paths:
        assert client.get(path).status_code == 200, path  # warm-up: templates compile once
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - start)
            assert response.status_code == 200, path
        out[path] = {"median_ms": round(1000 * statistics.median(times), 1), "max_ms": round(1000 * max(times), 1)}
    return out


def sse_latency(base: str, token: str, metrics: Path, n: int = 5) -> list[float]:
    """Seconds from appending a metrics line to a client receiving it, `n` times."""
    import httpx

    got: dict[int, float] = {}
    ready = threading.Event()

    def listen():
        with httpx.stream("GET", f"{base}/api/runs/live/metrics/stream",
                          headers={"Authorization": f"Bearer {token}"}, timeout=30) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and '"step"' in line:
                    step = json.loads(line[6:])["step"]
                    got[step] = time.monotonic()
                    ready.set()
                    if step == 1000 + n - 1:
                        return

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    latencies = []
    for i in range(n):
        with open(metrics, "a") as f:
            f.write(json.dumps({"step": 1000 + i, "split": "train", "loss": 1.0}) + "\n")
        written = time.monotonic()
        deadline = written + 10
        while 1000 + i not in got and time.monotonic() < deadline:
            time.sleep(0.01)
        latencies.append(round(got.get(1000 + i, float("inf")) - written, 3))
        time.sleep(0.3)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunesmith-ui-bench-") as tmp:
        tmp = Path(tmp)
        os.environ["TUNESMITH_HOME"] = str(tmp / "home")
        workspace = tmp / "workspace"
        workspace.mkdir()
        from fastapi.testclient import TestClient

        from tunesmith.serve.server import start_in_thread
        from tunesmith.ui.app import create_app
        from ui_helpers import fake_report, fake_run

        start = time.perf_counter()
        for i in range(args.runs):
            rows = [{"step": s, "split": "train", "loss": 2.0 - s / 100, "tokens_per_s": 900.0} for s in range(1, 41)]
            fake_run(workspace / "runs", f"run-{i:04d}", steps=40, metrics=rows,
                     created=f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00")
        fake_report(workspace / "runs", "big-report", n_examples=500)  # a compare of 500 examples x 5 strategies
        made = time.perf_counter() - start
        app = create_app(workspace, "bench", state_dir=tmp / "jobs")
        client = TestClient(app, base_url="http://127.0.0.1:8765", headers={"Authorization": "Bearer bench"})
        pages = time_pages(client, ["/runs", "/api/runs", "/runs/run-0100", "/api/runs/run-0100/metrics", "/data",
                                    "/train", "/runs/overlay?name=run-0001&name=run-0002&name=run-0003",
                                    "/compare?run=big-report", "/compare?run=big-report&start=450"], args.repeat)
        heavy = sorted(m for m in ("torch", "transformers", "accelerate", "peft") if m in sys.modules)
        rss = rss_mb()
        fake_run(workspace / "runs", "live", status="running", steps=2)
        server = start_in_thread(app)
        try:
            latencies = sse_latency(server.url, "bench", workspace / "runs" / "live" / "metrics.jsonl")
        finally:
            server.stop()
    print(f"{args.runs} fake runs registered in {made:.1f} s; {args.repeat} requests per page")
    for path, t in pages.items():
        print(f"  {path:60s} median {t['median_ms']:7.1f} ms   max {t['max_ms']:7.1f} ms")
    print(f"metrics line -> SSE client: {', '.join(f'{x:.2f}' for x in latencies)} s (target < 2 s)")
    print(f"UI process RSS after the pages: {rss:.0f} MB (target < 300 MB idle); heavy modules loaded: {heavy or 'none'}")
    print(json.dumps({"runs": args.runs, "pages": pages, "sse_latency_s": latencies, "rss_mb": round(rss),
                      "heavy_modules": heavy}))


if __name__ == "__main__":
    main()
