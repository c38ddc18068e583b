"""`tunesmith quickstart` end to end on the tiny model and the bundled example data."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_on_the_tiny_model(tiny_model_dir, tmp_path, store_home, monkeypatch):
    from tunesmith.cli.main import app

    monkeypatch.chdir(ROOT)  # the bundled example is found relative to the repository root
    result = CliRunner().invoke(app, ["quickstart", "--model", str(tiny_model_dir), "--steps", "2", "--samples", "1",
                                      "--max-new-tokens", "4", "--limit", "3", "--probe", "none",
                                      "--output-dir", str(tmp_path / "runs")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "[1/4] check examples/support-faq/faq.jsonl: 503 usable of 503 rows, 0 errors" in out
    assert "validation loss: base " in out and out.count("base:") == 1 and out.count("tuned:") == 1
    assert "tunesmith serve quickstart-" in out and "quickstart done in" in out
    run_dir = next((tmp_path / "runs").iterdir())
    assert f"report: {run_dir.resolve() / 'report.html'}" in out.replace("\n", "")
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["strategies"]) == {"base", "prompt", "rag", "tuned", "tuned+rag"} and report["n_examples"] == 3
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["status"], manifest["steps"], manifest["method"]) == ("completed", 2, "lora")
    card = json.loads((run_dir / "data" / "data_card.json").read_text())
    assert card["splits"]["test"] > 0 and (run_dir / "final" / "adapter_model.safetensors").is_file()


def test_quickstart_missing_data_is_a_clear_error(tmp_path):
    from tunesmith.cli.main import app
    from tunesmith.errors import DataError

    try:
        CliRunner().invoke(app, ["quickstart", "--data", str(tmp_path / "none.jsonl")], catch_exceptions=False)
    except DataError as e:
        assert "data file not found" in str(e)
    else:
        raise AssertionError("expected DataError")
