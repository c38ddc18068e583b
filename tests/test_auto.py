"""`auto` settings, the time budget and sample answers (issue 18): the rules, and real runs on the tiny model."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.errors import ConfigError, TrainError
from tunesmith.train import auto
from tunesmith.train.batching import StepPlan
from train_helpers import overrides, sums_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "support-faq"


def shape(n, tokens=90, trained=40, params=135e6, method="lora", grad_accum=1, world=1):
    return auto.Shape(n, tokens, n * trained, int(params), method, grad_accum, world)


def test_a_few_hundred_examples_get_three_epochs_about_fifty_steps_each_and_a_small_adapter():
    cfg, chosen = auto.choose(load_config(), shape(402))
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.method.r, cfg.method.alpha) == (3, 8, 2e-4, 8, 16)
    assert cfg.train.eval_every == 19 and cfg.train.save_every == 19  # 153 steps: 9 validations
    assert set(chosen) == set(auto_keys := ["train.epochs", "train.batch_size", "train.eval_every", "train.save_every",
                                            "train.lr", "method.r", "method.alpha"])
    assert chosen["train.epochs"].reason == "402 examples: 3 passes; early stopping keeps the best step"
    line = auto.plan_line(chosen)
    assert line.startswith("auto: epochs 3 (402 examples") and "r 8 (16,080 trained tokens an epoch)" in line
    assert len(auto_keys) == 7


@pytest.mark.parametrize("n", [1, 3, 10, 33, 120, 402, 999, 5000, 30000, 200000])
@pytest.mark.parametrize("grad_accum,world", [(1, 1), (4, 1), (2, 4)])
def test_every_run_validates_at_least_8_times_and_twice_an_epoch(n, grad_accum, world):
    cfg, _ = auto.choose(load_config(), shape(n, grad_accum=grad_accum, world=world))
    plan = StepPlan(n, cfg.train.batch_size, grad_accum, world)
    total = plan.total_steps(cfg.train.epochs, None)
    validations = math.ceil(total / cfg.train.eval_every)
    assert validations >= min(8, total)
    if plan.steps_per_epoch >= 2:
        assert plan.steps_per_epoch / cfg.train.eval_every >= 2
    assert 1 <= cfg.train.epochs <= 25 and cfg.train.batch_size >= 1
    assert n * cfg.train.epochs >= min(100, 25 * n) or n * cfg.train.epochs >= 25_000 // 2


def test_epochs_follow_openais_rule_and_long_examples_shrink_the_batch():
    assert auto.choose(load_config(), shape(10))[0].train.epochs == 10  # 100 examples seen
    assert auto.choose(load_config(), shape(2))[0].train.epochs == 25  # at most 25
    assert auto.choose(load_config(), shape(20000))[0].train.epochs == 1
    cfg, chosen = auto.choose(load_config(), shape(20000, tokens=4096))
    assert cfg.train.batch_size == 8 and "at most 32,768 tokens a step of 4096-token examples" in chosen[
        "train.batch_size"].reason


def test_full_fine_tuning_takes_smaller_steps_on_bigger_models_and_saves_every_second_validation():
    cfg, chosen = auto.choose(load_config(None, ["method.name=full"]), shape(402, method="full"))
    assert cfg.train.lr == 5e-5 and cfg.train.save_every == 2 * cfg.train.eval_every
    assert "method.r" not in chosen and "method.alpha" not in chosen  # no adapter: nothing to choose or print
    cfg, chosen = auto.choose(load_config(None, ["train.max_steps=30"]), shape(402))
    assert "train.epochs" not in chosen and cfg.train.eval_every == 3  # max_steps overrides epochs
    assert auto.choose(load_config(None, ["method.name=full"]), shape(402, method="full", params=7e9))[0].train.lr == 2e-5
    assert auto.choose(load_config(), shape(402, params=70e9))[0].train.lr == 1e-4
    assert auto.choose(load_config(), shape(402, trained=1000))[0].method.r == 16
    assert auto.choose(load_config(), shape(5000, trained=1000))[0].method.r == 32


def test_explicit_values_win_and_a_resume_takes_back_what_its_run_chose():
    cfg, chosen = auto.choose(load_config(None, ["train.epochs=2", "method.r=4", "train.eval_every=7"]), shape(402))
    assert (cfg.train.epochs, cfg.method.r, cfg.method.alpha, cfg.train.eval_every) == (2, 4, 8, 7)
    assert not {"train.epochs", "method.r", "train.eval_every"} & set(chosen)
    previous = {"train.lr": {"value": 3e-4, "reason": "as chosen then"}}
    cfg, chosen = auto.choose(load_config(), shape(402), previous=previous)
    assert cfg.train.lr == 3e-4 and chosen["train.lr"].reason == "as chosen then"


def test_gradient_checkpointing_turns_on_only_when_the_peak_passes_85_percent_of_the_free_memory():
    import dataclasses

    def choose(peak, checkpointed, free, *sets, previous=None):
        memory = auto.Memory(peak, checkpointed, free)
        return auto.choose(load_config(None, list(sets)), dataclasses.replace(shape(402), memory=memory),
                           previous=previous)

    cfg, chosen = choose(1.2e9, 1.0e9, 20e9)
    assert cfg.train.gradient_checkpointing is False
    assert chosen["train.gradient_checkpointing"].reason == "peak ~1.2 GB of 20.0 GB free"
    assert auto.plan_line(chosen).endswith(", gradient_checkpointing off (peak ~1.2 GB of 20.0 GB free)")
    cfg, chosen = choose(18e9, 6e9, 20e9)  # 90% of what is free
    assert cfg.train.gradient_checkpointing is True
    assert auto.plan_line(chosen).endswith(
        ", gradient_checkpointing on (peak ~18.0 GB without it, ~6.0 GB with it, of 20.0 GB free)")
    assert choose(16e9, 6e9, 20e9)[0].train.gradient_checkpointing is False  # 80%: fits as it is
    assert "still more than free" in choose(30e9, 25e9, 20e9)[1]["train.gradient_checkpointing"].reason
    assert choose(30e9, 30e9, 20e9)[0].train.gradient_checkpointing is False  # no lower with it: no use
    assert choose(30e9, 6e9, None)[0].train.gradient_checkpointing is False  # free memory unknown
    cfg, chosen = choose(30e9, 6e9, 20e9, "train.gradient_checkpointing=false")  # a value set wins
    assert cfg.train.gradient_checkpointing is False and "train.gradient_checkpointing" not in chosen
    # chosen for the machine: a resume (perhaps elsewhere) chooses again rather than taking it back
    previous = {"train.gradient_checkpointing": {"value": True, "reason": "on the machine it started on"}}
    assert choose(1.2e9, 1.0e9, 20e9, previous=previous)[0].train.gradient_checkpointing is False
    # without a memory estimate (the batch size not chosen yet) it stays auto and unprinted
    cfg, chosen = auto.choose(load_config(), shape(402))
    assert cfg.train.gradient_checkpointing == "auto" and "train.gradient_checkpointing" not in chosen


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2.5h", 9000), ("600", 600),
                                          ("1 h 5 min", 3900), (45, 45)])
def test_durations(text, seconds):
    assert auto.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "m10", "-5m", "0s"])
def test_bad_durations_name_the_key(text):
    with pytest.raises(ConfigError, match=r"train.time_budget: .* is not a duration"):
        auto.parse_duration(text)


def test_budget_steps_count_steps_validations_and_a_reserve():
    # 100 s left after 20 s of loading and a 10 s reserve: 70 s for steps of 1 s plus a 4 s validation every 4 steps
    assert auto.budget_steps(100, 20, 1.0, 4.0, 4, planned=1000, reserve=10) == 35
    assert auto.budget_steps(100, 20, 1.0, 4.0, 4, planned=30, reserve=10) == 30
    assert auto.budget_steps(100, 99, 1.0, 4.0, 4, planned=30, reserve=10) == 1


# ------------------------------------------------------------------ real runs on the tiny model


def _rows(run, split):
    return [r for r in map(json.loads, (run.dir / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


def test_the_bundled_example_with_the_defaults_validates_8_times_and_prints_sample_answers(
        tiny_model_dir, tmp_path, store_home, capsys, one_thread):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app
    from tunesmith.train.finetune import finetune

    run = finetune(EXAMPLE / "config.yaml", overrides=(f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'runs'}",
                                                      "train.threads=1", "train.sample_max_tokens=8"), name="faq")
    err = capsys.readouterr().err
    assert run.status == "completed"
    validations = _rows(run, "validation")
    assert len(validations) >= 8
    samples = _rows(run, "samples")
    assert [r["step"] for r in samples] == [0] + [r["step"] for r in validations]  # before training, then each one
    assert all(len(r["samples"]) == 3 and {"prompt", "answer", "expected"} <= set(r["samples"][0]) for r in samples)
    assert "auto: epochs 3 (" in err and "eval_every" in err and "r 8 (" in err
    assert "step 0: before training\n  [1] " in err and err.count("validation loss") >= 8
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["resolved"]["train.epochs"]["value"] == 3
    assert manifest["method_config"]["r"] == 8 and manifest["method_config"]["alpha"] == 16
    saved = (run.dir / "config.yaml").read_text()
    assert "epochs: auto" in saved  # what was asked; the manifest says what was chosen
    shown = CliRunner().invoke(app, ["runs", "show", "faq"])
    assert shown.exit_code == 0, shown.output
    assert "auto: train.epochs = 3 (" in shown.output and "auto: method.r = 8 (" in shown.output


def test_sample_answers_do_not_change_what_a_resume_computes(tiny_model_dir, tmp_path, store_home, one_thread):
    from tunesmith.train.finetune import finetune

    train, val = sums_dataset(tmp_path / "data")
    sets = overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=8, eval_every=2, save_every=2)
    sets += ["train.sample_answers=2", "train.sample_max_tokens=6"]
    straight = finetune(load_config(None, sets), name="straight", show_progress=False)
    finetune(load_config(None, sets), name="stopped", show_progress=False, on_step=lambda st, m: st.step == 4)
    resumed = finetune(None, resume="stopped", show_progress=False)
    assert [r["loss"] for r in _rows(resumed, "train")] == [r["loss"] for r in _rows(straight, "train")]
    assert _rows(resumed, "samples") == _rows(straight, "samples")  # same prompts, same greedy answers


def test_a_time_budget_stops_on_time_and_keeps_the_best_step(tiny_model_dir, tmp_path, store_home, capsys, one_thread):
    from tunesmith.train.finetune import finetune

    train, val = sums_dataset(tmp_path / "data", n_train=40)
    sets = overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=None, eval_every="auto",
                     save_every="auto") + ["train.epochs=400", "train.time_budget=25s", "train.sample_answers=2",
                                           "train.sample_max_tokens=4"]
    started = time.time()
    # every step is slowed after it is measured: the plan is too long, the deadline must stop the loop
    run = finetune(load_config(None, sets), name="budget", on_step=lambda st, m: time.sleep(0.4) or False)
    elapsed = time.time() - started
    err = capsys.readouterr().err
    assert run.status == "completed" and run.stop_reason == "time_budget"
    assert elapsed < 25 + 8
    assert run.final is not None and (run.final / "adapter_model.safetensors").is_file()
    assert run.best_step is not None and run.best_step <= run.steps
    assert "time budget 25 s: " in err and "planned steps fit" in err and f"time budget: stopped at step {run.steps}" in err
    manifest = json.loads((run.dir / "manifest.json").read_text())
    assert manifest["budget"]["steps"] < manifest["budget"]["planned_steps"] == 4000
    assert _rows(run, "validation")[-1]["step"] == run.steps  # validated where it stopped
    steps = [r["step"] for r in _rows(run, "samples")]
    assert steps == [0] + [r["step"] for r in _rows(run, "validation")]  # step 0 once: the timed round is reused


def test_bad_budgets_are_one_line_each(tiny_model_dir, tmp_path, store_home, one_thread):
    from tunesmith.train.finetune import finetune

    train, val = sums_dataset(tmp_path / "data")
    sets = overrides(tiny_model_dir, train, val, tmp_path / "runs")
    with pytest.raises(ConfigError, match="train.time_budget and train.max_steps are both set"):
        finetune(load_config(None, sets + ["train.time_budget=10m"]), show_progress=False)
    with pytest.raises(ConfigError, match="train.time_budget: 'soon' is not a duration"):
        finetune(load_config(None, sets + ["train.time_budget=soon", "train.max_steps=null"]), show_progress=False)
    with pytest.raises(TrainError, match=r"train.time_budget 0.01s is shorter than one training step here \(measured"):
        finetune(load_config(None, sets + ["train.time_budget=0.01s", "train.max_steps=null"]), show_progress=False)


def test_the_report_shows_sample_answers_as_a_table_of_step_by_prompt():
    from tunesmith.evaluate.report import render_html

    rows = [{"step": s, "split": "samples", "samples": [{"prompt": "Q<1>", "answer": f"A{s}", "expected": "E"}]}
            for s in (0, 5, 10)]
    page = render_html({"run": "r", "strategies": {}}, rows)
    assert "id='samples'" in page and "Q&lt;1&gt;" in page
    assert page.index("0 (base)") < page.index("A5") < page.index("A10")


def test_a_resumed_budget_run_trains_to_the_steps_its_run_planned(tiny_model_dir, tmp_path, store_home, one_thread):
    from tunesmith.train.finetune import finetune

    train, val = sums_dataset(tmp_path / "data", n_train=16)
    sets = overrides(tiny_model_dir, train, val, tmp_path / "runs", max_steps=None, save_every=2) + [
        "train.epochs=3", "train.time_budget=10m"]
    first = finetune(load_config(None, sets), name="b", show_progress=False, on_step=lambda st, m: st.step == 4)
    assert first.status == "stopped"
    planned = json.loads((first.dir / "manifest.json").read_text())["budget"]
    assert planned["steps"] == planned["planned_steps"] == 12  # 16 examples / 4 a step x 3 epochs: all fit in 10 min
    resumed = finetune(None, resume="b", show_progress=False)
    assert (resumed.status, resumed.steps, resumed.stop_reason) == ("completed", 12, None)
    assert json.loads((resumed.dir / "manifest.json").read_text())["budget"] == planned


def test_under_a_time_budget_validating_takes_at_most_a_quarter_of_it():
    # 180 s left, 20 s a validation: 2 validations fit in a quarter, not the 8 the cadence rule wants
    most = auto.budget_validations(240, 60, 20.0)
    assert most == 2
    cfg, chosen = auto.choose(load_config(), shape(402), total_steps=12, max_validations=most)
    assert math.ceil(12 / cfg.train.eval_every) == 2
    assert chosen["train.eval_every"].reason == "2 validations in 12 steps: at most 25% of the time budget"
    assert auto.budget_validations(240, 60, 0.0) is None
