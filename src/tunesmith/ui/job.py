"""The child side of ui/jobs.py: `python -m tunesmith.ui.job FOLDER` runs FOLDER/spec.json's call.

It writes FOLDER/result.json: {"status": "done", "result": ...}, {"status": "failed", "error":
one line, "problems": [...]} or {"status": "stopped"}. SIGTERM takes the Ctrl-C path (as in
cli/main.py), so a training run saves its checkpoint and is marked stopped. A TunesmithError is
the one line the CLI prints; anything else is a bug: one line in the log, the traceback in
FOLDER/traceback.txt (for a bug report; the log is what the pages show).
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import traceback
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.io import atomic_write_text, json_text


TRACEBACK = "traceback.txt"  # in the job's folder, beside log.txt (which the pages show)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(folder: Path) -> dict:
    """Call the spec's target and return the outcome (what result.json holds)."""
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    module, _, name = spec["target"].partition(":")
    try:
        value = getattr(importlib.import_module(module), name)(**spec["kwargs"])
        return {"status": "done", "result": value}
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return {"status": "failed", "error": str(e), "problems": getattr(e, "problems", None)}
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr, flush=True)
        return {"status": "stopped"}
    except Exception as e:  # a bug: the traceback goes to its own file (for a bug report), the log and page get one line
        where = folder / TRACEBACK
        where.write_text(traceback.format_exc(), encoding="utf-8")
        line = f"unexpected error ({type(e).__name__}: {e}); this is a bug, the traceback is in {where}"
        print(f"error: {line}", file=sys.stderr, flush=True)
        return {"status": "failed", "error": line}


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    # Stop sends SIGINT. A UI started in the background by a script (`tunesmith ui &`) has SIGINT
    # ignored, and its children inherit that: Python then never raises KeyboardInterrupt, so stop
    # would do nothing. The default handler is set again here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    folder = Path(argv[0])
    outcome = run(folder)
    try:
        text = json_text(outcome, default=str)
    except (TypeError, ValueError) as e:
        text = json_text({"status": "failed", "error": f"the job's result is not JSON ({e}); this is a bug"})
    atomic_write_text(folder / "result.json", text)
    return 0 if outcome["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
