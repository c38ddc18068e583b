"""The Compare, Chat and Export pages in a real headless Chromium, as a person uses them; screenshots to docs/ui/.

Skipped with the reason when Chromium or Playwright is missing (ui_helpers.browser).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from run_helpers import SYSTEM, chat_ready_run
from ui_helpers import open_page, page, screenshot, ui_server  # noqa: F401  (fixtures)

JOB_S = 180_000  # ms a job may take on the shared 2-core machine


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    return chat_ready_run(tiny_model_dir, tmp_path_factory.mktemp("ui2-browser-run"))


@pytest.fixture
def server(ui_server, tiny_run, monkeypatch):  # noqa: F811
    """The core UI server (its own $TUNESMITH_HOME) with the tiny run registered."""
    from tunesmith.runs.store import register_run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job and chat children share 2 cores with the browser
    register_run(tiny_run, json.loads((tiny_run / "manifest.json").read_text()))
    return ui_server


def test_compare_a_run_and_read_the_answers_side_by_side(server, page):  # noqa: F811
    (server.workspace / "broken.jsonl").write_text('{"input": "a", "output": \n')
    open_page(page, server, "/compare")
    assert page.locator("#compare-none").is_visible()  # no report yet
    # a broken test file: the CLI's one line, in the page
    page.select_option("#compare-data", "broken.jsonl")
    page.click("#compare-start")
    page.wait_for_selector("#flash:not([hidden])", timeout=JOB_S)
    assert "broken.jsonl:1" in page.inner_text("#flash") and "Traceback" not in page.content()
    # the real comparison on the run's own test split
    page.select_option("#compare-data", "")
    for name in ("rag", "tuned+rag"):  # retrieval loads the embedding model: left out to keep the test short
        page.uncheck(f'input[name="strategy"][value="{name}"]')
    page.fill("#compare-limit", "3")
    page.fill("#compare-tokens", "5")
    page.click("#compare-start")
    page.wait_for_selector("#compare-log", state="visible")
    page.reload()  # the page follows the running job again (or, if it has just ended, shows its report)
    page.wait_for_selector("#compare-job:not([hidden]), #compare-report")
    page.wait_for_selector("#compare-report", timeout=JOB_S)
    rows = page.locator("#compare-metrics tbody tr")
    assert rows.count() == 3 and "tuned" in rows.nth(2).inner_text()
    assert page.locator("#compare-metrics .ci").count() == 2 * 5  # prompt and tuned against base
    assert page.locator("#compare-forgetting tbody tr").count() == 4  # the fast probe's tasks
    answers = page.locator("#compare-examples tbody tr")
    assert answers.count() == 3
    tuned = answers.first.locator('td[data-strategy="tuned"]')
    assert tuned.locator(".vs-base").is_visible() and not tuned.locator(".vs-reference").is_visible()
    page.check('input[name="diff-against"][value="reference"]')
    assert tuned.locator(".vs-reference").is_visible() and not tuned.locator(".vs-base").is_visible()
    assert page.locator("#compare-examples .vs-reference .add").count() > 0  # the tiny model is never right
    page.check('input[name="diff-against"][value="base"]')
    screenshot(page, "compare")
    assert page.errors == []


def test_chat_with_base_and_tuned_side_by_side_both_streaming(server, page):  # noqa: F811
    open_page(page, server, "/chat")
    assert page.input_value("#chat-system") == SYSTEM  # the run's system prompt, preset
    assert "base of run-1" in page.inner_text("#pane-left h3") and "run-1" in page.inner_text("#pane-right h3")
    page.fill("#chat-max-tokens", "12")
    # count the updates each answer gets: streamed answers grow piece by piece
    page.evaluate("""() => {
      window.updates = {left: 0, right: 0};
      for (const side of ["left", "right"]) {
        new MutationObserver(() => { window.updates[side] += 1; })
          .observe(document.getElementById(`log-${side}`), {childList: true, subtree: true, characterData: true});
      }
    }""")
    page.fill("#chat-input", "Tell me about the sea.")
    page.press("#chat-input", "Enter")
    for side in ("left", "right"):
        page.wait_for_selector(f'#log-{side} .msg.assistant[data-state="done"]', timeout=JOB_S)
    answers = [page.inner_text(f"#log-{side} .msg.assistant") for side in ("left", "right")]
    assert all(a.strip() for a in answers) and answers[0] != answers[1]
    updates = page.evaluate("window.updates")
    assert updates["left"] >= 4 and updates["right"] >= 4, updates  # loading, then several pieces each
    from playwright.sync_api import expect

    # the page asks which models are loaded after both answers end (one more request): wait for it; the
    # placeholder "no models loaded: ..." must not pass, and the next turn needs the Send button back
    expect(page.locator("#chat-loaded")).to_have_text(re.compile(r"^loaded: .*run-1"), timeout=JOB_S)
    expect(page.locator("#chat-send")).to_be_enabled(timeout=JOB_S)
    # a second turn: each side goes on from its own answer
    page.fill("#chat-input", "And the mountains?")
    page.press("#chat-input", "Enter")
    for side in ("left", "right"):  # (locators, not wait_for_function: the page's CSP forbids eval)
        page.locator(f'#log-{side} .msg.assistant[data-state="done"]').nth(1).wait_for(timeout=JOB_S)
    screenshot(page, "chat")
    page.click("#chat-release")
    expect(page.locator("#chat-loaded")).to_have_text("models released")
    assert server.app.state.chat.servers.child is None
    assert page.errors == []


def test_export_a_run_and_download_a_verified_file(server, page):  # noqa: F811
    open_page(page, server, "/export")
    assert page.locator("#export-none").is_visible()
    assert page.is_checked('input[name="format"][value="adapter"]')
    page.click("#export-start")
    page.wait_for_selector("#export-adapter", timeout=JOB_S)
    section = page.locator("#export-adapter")
    assert "verified" in section.locator("h3").inner_text()
    assert section.locator("td.check.match").count() == 1 and "answers identical" in section.inner_text()
    with page.expect_download() as info:
        section.locator('a:text("adapter_config.json")').click()
    assert "lora" in Path(info.value.path()).read_text().lower()
    screenshot(page, "export")
    assert page.errors == []
