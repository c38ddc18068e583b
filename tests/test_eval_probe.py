"""The forgetting probe: vendored data, scoring on tiny cases checked against direct computation, the warning."""

from __future__ import annotations

import pytest

from tunesmith.evaluate import probe as P


pytestmark = pytest.mark.usefixtures("one_thread")


def test_vendored_tasks_and_fast_subset():
    full = {t.name: len(t.rows) for t in P.load_tasks("full")}
    assert full == {"general_knowledge": 70, "human_organs_senses": 42, "known_unknowns": 46, "qa_wikidata": 1000}
    fast = P.load_tasks("fast")
    assert {t.name: len(t.rows) for t in fast} == {"general_knowledge": 24, "human_organs_senses": 24,
                                                    "known_unknowns": 24, "qa_wikidata": 48}
    assert fast[0].rows[0] == P.load_tasks("full")[0].rows[0]  # the same rows every time
    assert (P.PROBE_DIR / "PROVENANCE.md").read_text().count("never") >= 1


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch

    from tunesmith.models.load import load_model

    model, tok = load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    with torch.no_grad():  # larger weights than the default init: varied answers, not one repeated token
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model, tok


def _choice_logprob(model, tok, question, choice):
    import torch

    prompt = tok(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    answer = tok(f" {choice}", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(prompt) + j - 1, t]) for j, t in enumerate(answer))


def test_multiple_choice_picks_the_most_likely_choice(tiny):
    model, tok = tiny
    question, choices = "How many legs do horses have?", ["two", "four", "six", "a great many legs"]
    best = max(range(len(choices)), key=lambda i: _choice_logprob(model, tok, question, choices[i]))
    rows = [{"question": question, "choices": choices, "answer_idx": i} for i in range(len(choices))]
    assert P.score_choices(model, tok, rows, batch_size=3) == [i == best for i in range(len(choices))]


def test_qa_counts_an_answer_contained_in_the_greedy_continuation(tiny):
    from tunesmith.models.engine import generate_ids

    model, tok = tiny
    prompt = "The capital of France is"
    text = generate_ids(model, tok, [tok(prompt, add_special_tokens=False)["input_ids"]], max_new_tokens=8)[0].text
    assert len(text) > 5
    rows = [{"prompt": prompt, "answers": ["zzz-not-there", text[2:5].upper()]},
            {"prompt": prompt, "answers": ["zzz-not-there"]}]
    assert P.score_qa(model, tok, rows) == [True, False]


def test_forgetting_warns_only_past_the_threshold():
    base = {"a": {"score": 50.0, "n": 10}, "b": {"score": 40.0, "n": 10}}
    tuned = {"a": {"score": 47.5, "n": 10}, "b": {"score": 39.0, "n": 10}}
    f = P.forgetting(base, tuned, threshold=2.0)
    assert f["tasks"]["a"]["change"] == -2.5 and f["tasks"]["a"]["forgot"]
    assert not f["tasks"]["b"]["forgot"]
    assert f["warnings"] == ["a: 50.0 -> 47.5 (-2.5 points)"]
