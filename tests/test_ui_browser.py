"""The UI as a person uses it, in a real headless Chromium (Debian's, driven by Playwright).

Every page this suite owns opens without a script error; a messy file is checked and its findings
filtered; a run is started on a tiny model and its curve gains points live; a finished run and an
overlay of runs are opened. Each page is saved as <page>.png: into docs/ui/ for the README
with TUNESMITH_UI_SCREENSHOTS=docs/ui, else into the test's tmp folder.
Skipped, with the reason, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import shutil

from ui_helpers import fake_run, open_page, page, screenshot, ui_server  # noqa: F401  (fixtures)
from test_ui import MESSY, TOKENIZER

def test_every_page_opens_without_a_script_error(page, ui_server):
    fake_run(ui_server.workspace / "runs", "first")
    for path, heading in (("/data", "Data"), ("/train", "Train"), ("/runs", "Runs"), ("/runs/first", "Run first")):
        open_page(page, ui_server, path)
        assert page.locator("h1").first.inner_text().startswith(heading)
    assert page.errors == []
    page.goto(f"{ui_server.base}/runs")  # the cookie is set: no token needed any more
    assert page.locator("h1").first.inner_text() == "Runs"


def test_a_messy_file_is_checked_and_its_findings_filtered(page, ui_server):
    (ui_server.workspace / "data").mkdir()
    (ui_server.workspace / "data" / "messy.jsonl").write_text("\n".join(MESSY) + "\n")
    open_page(page, ui_server, "/data")
    page.select_option("#file", "data/messy.jsonl")
    shutil.copytree(TOKENIZER, ui_server.workspace / "tokenizer")  # a model is a store name or a workspace folder
    page.fill("#model", "tokenizer")
    page.click("#check")
    page.wait_for_selector("#results:not([hidden])")
    rows = page.locator("#findings tbody tr")
    assert rows.count() >= 4
    assert "fix the data first" in page.inner_text("#verdict")
    page.select_option("#rule-filter", "dup.conflict")
    assert rows.count() == 1 and "same input as line 3" in rows.first.inner_text()
    page.select_option("#severity-filter", "error")
    assert rows.count() == 0
    page.select_option("#rule-filter", "")
    assert "json.invalid" in rows.first.inner_text()
    page.select_option("#severity-filter", "")
    assert page.locator("#pairs .pair").count() == 2
    assert "About four weeks." in page.inner_text("#pairs")
    assert page.locator("#preview .trained").first.inner_text().startswith("A permit is")
    assert page.locator("#histogram canvas").count() == 1
    screenshot(page, "data")
    page.click("#prepare")
    page.wait_for_function("() => document.getElementById('prepare-result').textContent.includes('wrote')")
    assert (ui_server.workspace / "data" / "messy" / "train.jsonl").is_file()
    assert page.errors == []


def test_a_run_started_in_the_page_draws_its_curve_live(page, ui_server, tiny_model_dir):
    from train_helpers import sums_dataset

    shutil.copytree(tiny_model_dir, ui_server.workspace / "tiny")
    sums_dataset(ui_server.workspace / "sums", n_train=24, n_val=4)
    open_page(page, ui_server, "/train")
    page.fill('[name="model.name"]', "./tiny")
    page.select_option('[name="data.train"]', "sums/train.jsonl")
    page.select_option('[name="data.validation"]', "sums/val.jsonl")
    for key, value in {"train.max_steps": "60", "train.batch_size": "2", "train.eval_every": "10",
                       "train.save_every": "30", "train.threads": "1", "train.sample_answers": "0",
                       "method.r": "4", "train.lr": "bad"}.items():
        page.fill(f'[name="{key}"]', value)
    page.click("#start")
    page.wait_for_selector("#problems li")
    assert "train.lr: expected float | auto, got 'bad'" in page.inner_text("#problems")
    assert f"400 {ui_server.base}/api/train/start" in page.errors  # that refusal (and the console's note of it)
    assert all("400" in e for e in page.errors)
    page.errors.clear()
    page.fill('[name="train.lr"]', "1e-3")
    page.click("#plan")
    page.wait_for_selector("#plan-lines p.mono")
    plan = page.inner_text("#plan-lines")
    assert plan.startswith("plan: ") and "training / 4 validation examples" in plan and "60 steps" in plan
    page.click("#start")
    page.wait_for_function("() => Number(document.getElementById('points').dataset.count || 0) >= 2")
    first = int(page.get_attribute("#points", "data-count"))
    page.wait_for_function(f"() => Number(document.getElementById('points').dataset.count || 0) > {first + 5}")
    assert page.locator("#loss-chart canvas").count() == 1
    screenshot(page, "train")
    page.wait_for_function("() => document.getElementById('train-status').textContent.startsWith('done')")
    assert int(page.get_attribute("#points", "data-count")) == 60
    assert page.errors == []


def test_a_finished_run_and_an_overlay(page, ui_server):
    for i, best in enumerate((1.31, 1.12, 0.98)):
        rows = [{"step": s, "split": "train", "loss": 2.5 * (0.97 ** s) + 0.1 * i, "tokens_per_s": 900.0 + 10 * s}
                for s in range(1, 41)]
        rows += [{"step": s, "split": "validation", "loss": 2.6 * (0.975 ** s) + 0.1 * i} for s in range(5, 41, 5)]
        fake_run(ui_server.workspace / "runs", f"faq-lora-r{8 << i}", steps=40, best=best, metrics=rows,
                 created=f"2026-12-01T1{i}:00:00")
    open_page(page, ui_server, "/runs")
    assert page.locator("#runs-table tbody tr").count() == 3
    screenshot(page, "runs")
    page.click("text=faq-lora-r16")
    page.wait_for_function("() => Number(document.getElementById('points').dataset.count || 0) == 40")
    assert page.inner_text("#run-status") == "completed"
    assert "smollm2-135m-instruct" in page.inner_text("#manifest")
    screenshot(page, "run")
    open_page(page, ui_server, "/runs")
    page.check("input[value='faq-lora-r8']")
    page.check("input[value='faq-lora-r32']")
    page.click("#overlay-button")
    page.wait_for_selector("#val-overlay canvas")
    page.wait_for_load_state("networkidle")
    legend = page.inner_text("#train-overlay")
    assert "faq-lora-r8" in legend and "faq-lora-r32" in legend and "faq-lora-r16" not in legend
    screenshot(page, "overlay")
    assert page.errors == []


def test_a_preference_runs_page_plots_its_reward_accuracy_and_margin(page, ui_server):
    rows = [{"step": s, "split": "train", "loss": 0.69 - s / 100, "tokens_per_s": 100.0, "reward_accuracy": 0.5 + s / 40,
             "reward_margin": s / 10} for s in range(1, 11)]
    rows += [{"step": s, "split": "validation", "loss": 0.7 - s / 50, "reward_accuracy": 0.6, "reward_margin": s / 5}
             for s in (5, 10)]
    fake_run(ui_server.workspace / "runs", "faq-dpo", steps=10, best=0.5, metrics=rows)
    fake_run(ui_server.workspace / "runs", "faq-sft", steps=10, best=1.0)
    open_page(page, ui_server, "/runs/faq-dpo")
    page.wait_for_selector("#pref-chart canvas")
    assert "validation margin" in page.inner_text("#pref-chart")
    open_page(page, ui_server, "/runs/faq-sft")  # an SFT run has no such chart
    page.wait_for_function("() => Number(document.getElementById('points').dataset.count || 0) == 10")
    assert page.locator("#pref-chart").is_hidden() and page.locator("#pref-chart canvas").count() == 0
    assert page.errors == []
