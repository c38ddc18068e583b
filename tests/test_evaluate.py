"""compare / eval end to end on a tiny model and a fake LoRA run: every strategy, the report, the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from run_helpers import QA, TRAIN, make_run, peaked_copy
from run_helpers import chat_rows as _chat
from run_helpers import write_jsonl as _write

from tunesmith.errors import EvalError, RunError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def peaked_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with larger weights: varied greedy answers that depend on the prompt."""
    return peaked_copy(tiny_model_dir, tmp_path_factory.mktemp("peaked"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, peaked_model) -> Path:
    return make_run(peaked_model, tmp_path_factory.mktemp("runs") / "run-1")


def test_eval_runs_every_strategy_and_the_report_has_each_plot(run_dir, tmp_path, monkeypatch):
    from tunesmith.evaluate import evaluate_run
    from tunesmith.evaluate import probe as P

    monkeypatch.setattr(P, "FAST_ROWS", {"choice": 3, "qa": 4})
    metric = tmp_path / "m.py"
    metric.write_text("def picky(pred, ref):\n    if len(pred) % 2:\n        raise ValueError('odd')\n    return 1.0\n")
    result = evaluate_run(str(run_dir), metrics=[f"{metric}:picky"], regex=r"\w", quiet=True)
    r = json.loads((run_dir / "report.json").read_text())
    assert result.html == run_dir / "report.html" and r["run"] == "run-1" and r["n_examples"] == 6
    assert list(r["strategies"]) == ["base", "prompt", "rag", "tuned", "tuned+rag"]
    for name, row in r["strategies"].items():
        for key in ("exact_match", "token_f1", "rouge_l", "bleu", "loss", "perplexity", "regex",
                    "seconds_per_example", "tokens_generated"):
            assert row[key] is not None, (name, key)
        assert 0 < row["tokens_generated"] <= 6 * 6
    assert set(r["intervals"]) == {"prompt", "rag", "tuned", "tuned+rag"}
    assert set(r["intervals"]["tuned"]["rouge_l"]) == {"diff", "low", "high", "n", "significant"}
    answers = {name: [e["answers"][name] for e in r["examples"]] for name in r["strategies"]}
    assert answers["tuned"] != answers["base"]  # the adapter changes the answers
    assert answers["rag"] != answers["base"]  # so do retrieved examples in the prompt
    assert r["strategies"]["tuned"]["loss"] != r["strategies"]["base"]["loss"]
    # a user metric that raises is recorded per example and the evaluation goes on
    odd = [e["line"] for e in r["examples"] if len(e["answers"]["base"]) % 2]
    assert [x["line"] for x in r["metric_errors"].get("base", {}).get("picky", [])] == odd
    assert set(r["forgetting"]["tasks"]) == {"general_knowledge", "human_organs_senses", "known_unknowns", "qa_wikidata"}
    assert r["forgetting"]["tasks"]["qa_wikidata"]["n"] == 4
    html = result.html.read_text()
    for plot in ("plot-loss", "plot-strategies", "plot-forgetting"):
        assert f"<img id='{plot}' alt='{plot}' src='data:image/png;base64," in html
    assert "<table id='examples'>" in html and "tuned answer" in html and "http" not in html.replace("https://", "")


def test_compare_without_a_run_writes_to_out_and_leaves_tuned_out(peaked_model, tmp_path):
    from tunesmith.evaluate import compare

    test = _write(tmp_path / "test.jsonl", [{"input": q, "output": a} for q, a in QA[:3]])
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "facts.md").write_text("Paris is the capital of France.\n\nSpiders have eight legs.")
    result = compare(test, out=tmp_path / "out", model=str(peaked_model), docs=str(docs), max_new_tokens=4, quiet=True)
    r = result.report
    assert list(r["strategies"]) == ["base", "prompt", "rag"]
    assert "no run given: tuned strategies left out" in r["notes"]
    assert "no training data: the prompt strategy has a system prompt only, no few-shot examples" in r["notes"]
    assert r["forgetting"] == {"skipped": "no run given"}
    assert (tmp_path / "out" / "report.json").is_file()
    assert "<p id='plot-loss' class='note'>" in result.html.read_text()
    with pytest.raises(EvalError, match="need a fine-tuned run"):
        compare(test, out=tmp_path / "out", model=str(peaked_model), strategies="base,tuned", quiet=True)


def test_batched_generation_equals_one_at_a_time(peaked_model):
    from tunesmith.models.engine import answer
    from tunesmith.models.load import load_model

    model, tok = load_model(str(peaked_model))
    convs = [[{"role": "user", "content": q}] for q, _ in QA]
    batched = answer(model, tok, convs, max_new_tokens=8, batch_size=4)
    single = [answer(model, tok, [c], max_new_tokens=8, batch_size=1)[0] for c in convs]
    assert batched == single
    assert len({g.token_ids for g in batched}) > 1


def test_overlap_with_training_data_is_refused_then_allowed(run_dir, tmp_path):
    from tunesmith.evaluate import compare

    test = _write(tmp_path / "test.jsonl", _chat(QA[:2] + TRAIN[:1]))
    kwargs = dict(run=str(run_dir), out=tmp_path / "o", strategies="base", probe="none", max_new_tokens=2, quiet=True)
    with pytest.raises(EvalError, match=r"1 of 3 test examples are also in the training data .*1 exact"):
        compare(test, **kwargs)
    r = compare(test, allow_overlap=True, **kwargs).report
    assert r["overlap"]["exact"] == 1 and r["overlap"]["lines"] == [3]
    assert (r["clean"]["n_examples"], r["clean"]["left_out"]) == (2, 1)  # scored without the seen example too


def test_near_overlap_warns_and_reports_the_metrics_without_it(run_dir, tmp_path, capsys):
    """A reworded training question in the test file: not refused; every metric also on the other test rows."""
    from tunesmith.cli.evaluate import _show
    from tunesmith.evaluate import compare
    from tunesmith.evaluate import metrics as M

    test = _write(tmp_path / "test.jsonl", _chat(QA[:3] + [("Name the capital of Italy, please.", "Rome.")]))
    result = compare(test, run=str(run_dir), out=tmp_path / "o", strategies="base,prompt", probe="none",
                     max_new_tokens=2, quiet=True)
    r = result.report
    assert (r["overlap"]["exact"], r["overlap"]["same_input"], r["overlap"]["near"]) == (0, 0, 1)
    [match] = r["overlap"]["near_matches"]
    assert (match["line"], match["train_line"], match["shared"]) == (4, 1, "user name the capital of italy")
    assert match["input_similarity"] == pytest.approx(5 / 6)  # 5 of 6 word pairs shared ("... italy please")
    assert any("1 of 4 test examples have a near copy of their input" in n for n in r["notes"])
    clean = r["clean"]
    assert (clean["n_examples"], clean["left_out"]) == (3, 1) and set(clean["intervals"]) == {"prompt"}
    kept = [e for e in r["examples"] if e["line"] != 4]
    for name in ("base", "prompt"):  # the same aggregation as on all rows, over the clean rows only
        assert clean["strategies"][name]["exact_match"] == M.aggregate("exact_match", [e["scores"][name]["exact_match"] for e in kept])
    assert clean["strategies"]["base"]["loss"] != r["strategies"]["base"]["loss"]
    html = result.html.read_text()
    assert "<table id='clean'>" in html and "<table id='near-matches'>" in html and "user name the capital of italy" in html
    capsys.readouterr()
    _show(result, json_out=False)  # piped (captured): tables print at full width, as `| grep` would see them
    printed = capsys.readouterr().out
    assert "on the 3 of 4 test examples with no match in the training data (1 left out)" in printed


def test_run_without_final_model_and_empty_test_file(peaked_model, run_dir, tmp_path):
    from tunesmith.evaluate import compare, evaluate_run

    broken = make_run(peaked_model, tmp_path / "broken", final=False)
    with pytest.raises(RunError, match="has no final model"):
        evaluate_run(str(broken), probe="none", quiet=True)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalError, match="the test data file is empty"):
        compare(empty, run=str(run_dir), out=tmp_path / "o", quiet=True)
    answerless = _write(tmp_path / "q.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(EvalError, match=r"q.jsonl:1: no assistant turn.*no usable rows.*tunesmith data check"):
        compare(answerless, out=tmp_path / "o", model=str(peaked_model), quiet=True)


def test_cli_eval_json_and_runs_compare(run_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = [str(Path(sys.executable).parent / "tunesmith")]
    out = subprocess.run(cli + ["eval", str(run_dir), "--strategies", "base,tuned", "--no-probe", "--limit", "2",
                                "--max-new-tokens", "3", "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert list(r["strategies"]) == ["base", "tuned"] and r["n_examples"] == 2 and "examples" not in r
    side = subprocess.run(cli + ["runs", "compare", str(run_dir), "--json"], capture_output=True, text=True, env=env)
    rows = json.loads(side.stdout)
    assert rows[0]["run"] == "run-1" and rows[0]["evaluated"] and rows[0]["rouge_l"] == r["strategies"]["tuned"]["rouge_l"]
    bad = subprocess.run(cli + ["compare", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "test data not found" in bad.stderr and "Traceback" not in bad.stderr


def test_rag_gives_retrieved_examples_as_few_shot_turns_and_docs_in_the_system_message():
    """Retrieved training examples are dynamic few-shot (the answer format shows); passages stay prose."""
    from tunesmith.evaluate import strategies as S

    case = S.Case([{"role": "system", "content": "Answer in SQL."}, {"role": "user", "content": "cars per year?"}], "x")
    best, second = S.Case([{"role": "user", "content": "cars?"}], "SELECT * FROM cars"), S.Case(
        [{"role": "user", "content": "trucks?"}], "SELECT * FROM trucks")
    ctx = S.Context(retrieved={"rag": [[best, second]], "tuned+rag": [["The cars table has a year column."]]})
    prompt = S.build_prompt("rag", case, 0, ctx)
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt[0]["content"] == "Answer in SQL."  # no prose header: the turns speak for themselves
    assert prompt[3:5] == [{"role": "user", "content": "cars?"}, {"role": "assistant", "content": "SELECT * FROM cars"}]
    assert prompt[-1] == {"role": "user", "content": "cars per year?"}  # the nearest example sits right before it
    docs = S.build_prompt("tuned+rag", case, 0, ctx)
    assert [m["role"] for m in docs] == ["system", "user"]
    assert "[1] The cars table has a year column." in docs[0]["content"] and S.RAG_HEADER in docs[0]["content"]


def test_compare_with_a_device_this_machine_lacks_is_one_line_before_any_work(tmp_path, monkeypatch):
    import torch

    from tunesmith.errors import ModelError
    from tunesmith.evaluate import compare

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    test = _write(tmp_path / "test.jsonl", _chat(QA[:2]))
    with pytest.raises(ModelError, match="--device cuda: this machine has no CUDA GPU"):
        compare(test, out=tmp_path / "o", strategies="base", device="cuda", quiet=True)
    assert not (tmp_path / "o").exists()
