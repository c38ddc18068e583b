"""Evaluation metrics against hand-computed values; response loss against the model's own loss; user metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tunesmith.errors import EvalError
from tunesmith.evaluate import metrics as M


pytestmark = pytest.mark.usefixtures("one_thread")


def test_normalize_and_exact_match():
    assert M.normalize("  The Cat, sat!  ") == "cat sat"
    assert M.exact_match("Paris.", "paris") == 1.0
    assert M.exact_match("An apple", "apple") == 1.0
    assert M.exact_match("Paris, France", "Paris") == 0.0


def test_token_f1_hand_computed():
    # pred words: cat sat on mat (4); ref words: cat is on mat (4); common 3 -> P = R = 3/4
    assert M.token_f1("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    # pred: a b c (after normalisation 'b c' since 'a' is an article) vs ref 'b': P = 1/2, R = 1 -> 2/3
    assert M.token_f1("a b c", "b") == pytest.approx(2 / 3)
    assert M.token_f1("x", "y") == 0.0
    assert M.token_f1("", "") == 1.0 and M.token_f1("", "y") == 0.0


def test_rouge_l_hand_computed():
    # LCS of 'the cat sat on the mat' / 'the cat is on the mat' = 'the cat on the mat' (5 of 6 words each)
    assert M.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert M.rouge_l("mat the", "the mat") == pytest.approx(0.5)


@pytest.mark.parametrize("prediction, reference, expected", [
    # Swedish: 'färdigt' and 'om' differ; LCS 'bygglovet är ... tio veckor' = 4 of 6 / 4 of 6 words
    ("bygglovet är färdigt om tio veckor", "bygglovet är klart efter tio veckor", 4 / 6),
    # Russian: LCS 'разрешение займёт недель' = 3 of 4 / 3 of 5 words -> F = 2 * 3/4 * 3/5 / (3/4 + 3/5)
    ("разрешение займёт десять недель", "разрешение займёт около десяти недель", 2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5)),
    # Chinese, one token per character: LCS '许可需要十周' = 6 of 8 / 6 of 6 characters
    ("许可需要大约十周。", "许可需要十周", 2 * (6 / 8) * 1 / (6 / 8 + 1)),
])
def test_rouge_l_counts_words_of_every_language(prediction, reference, expected):
    assert M.rouge_l(prediction, reference) == pytest.approx(expected)
    assert M.rouge_l(reference, reference) == 1.0 and M.rouge_l("помощь", reference) == 0.0


def test_rouge_l_on_english_is_unchanged_from_rouge_score():
    from rouge_score import rouge_scorer

    plain = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [("The permits were approved in 10 weeks!", "permit approval takes ten weeks"),
             ("don't_stop running, it's 2024", "Dont stop: runs in 2024."), ("", "x"), ("a b", "")]
    for pred, ref in pairs:
        assert M.rouge_l(pred, ref) == pytest.approx(plain.score(ref, pred)["rougeL"].fmeasure)


def test_corpus_bleu_from_stats_matches_sacrebleu():
    import sacrebleu

    preds = ["the cat sat on the mat", "a quick brown fox", "hello"]
    refs = ["the cat sat on a mat", "the quick brown fox jumps", "hello world"]
    stats = np.stack([M.bleu_stats(p, r) for p, r in zip(preds, refs)])
    assert M.bleu_from_stats(stats) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert M.aggregate("bleu", list(stats)) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    # a single sentence, by hand: 6/6 words, 5/5 ... -> precisions 5/6, 3/5, 2/4, 1/3, BP = 1
    one = M.bleu_from_stats(M.bleu_stats("the cat sat on the mat", "the cat sat on a mat"))
    assert one == pytest.approx(100 * math.exp((math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4))


def test_aggregate_loss_pools_tokens_and_means_skip_errors():
    assert M.aggregate("loss", [(2.0, 1), (6.0, 3)]) == pytest.approx(2.0)  # 8 nats / 4 tokens
    assert M.aggregate("perplexity", [(2.0, 1), (6.0, 3)]) == pytest.approx(math.exp(2.0))
    assert M.aggregate("exact_match", [1.0, 0.0, 1.0, 1.0]) == 0.75
    assert M.aggregate("mine", [1.0, None, 0.0]) == 0.5
    assert M.aggregate("mine", [None]) is None


def test_response_nll_equals_the_models_own_loss(tiny_model_dir):
    import torch

    from tunesmith.data.render import render
    from tunesmith.models.load import load_model

    model, tok = load_model(str(tiny_model_dir))
    convs = [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Name a colour, please, any colour you like."},
         {"role": "assistant", "content": "Blue, like the sky."}],
    ]
    got = M.response_nll(model, tok, convs, batch_size=2)  # padded together in one batch
    for conv, (nll, n) in zip(convs, got):
        r = render(conv, tok)
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])).loss
        assert n == r.n_trained - (r.loss_mask[0] == 1)  # every trained token but a first one
        assert nll / n == pytest.approx(float(ref), rel=1e-5)


def test_python_metric_from_a_file_and_errors_kept_per_example(tmp_path):
    f = tmp_path / "my_metrics.py"
    f.write_text("def polite(pred, ref):\n    if pred == 'boom':\n        raise ValueError('no')\n    return 'please' in pred\n")
    metric = M.python_metric(f"{f}:polite")
    assert metric.name == "polite"
    assert metric.score("yes please", "x") == (1.0, None)
    assert metric.score("no", "x") == (0.0, None)
    assert metric.score("boom", "x") == (None, "ValueError: no")
    with pytest.raises(EvalError, match="has no function 'rude'"):
        M.python_metric(f"{f}:rude")
    with pytest.raises(EvalError, match="expected module:function"):
        M.python_metric("just_a_module")
    with pytest.raises(EvalError, match="cannot import"):
        M.python_metric("no_such_module_xyz:f")


def test_regex_and_json_schema_metrics(tmp_path):
    assert M.regex_metric(r"\d{3}").score("call 555 now", "")[0] == 1.0
    assert M.regex_metric(r"\d{3}").score("call me", "")[0] == 0.0
    with pytest.raises(EvalError, match="not a valid regular expression"):
        M.regex_metric("(")
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}))
    m = M.json_schema_metric(schema)
    assert m.score('{"name": "Ada"}', "")[0] == 1.0
    assert m.score('```json\n{"name": "Ada"}\n```', "")[0] == 1.0
    assert m.score('{"name": 3}', "")[0] == 0.0
    assert m.score("not json", "")[0] == 0.0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "nonsense"}))
    with pytest.raises(EvalError, match="not a valid JSON schema"):
        M.json_schema_metric(bad)
    with pytest.raises(EvalError, match="file not found"):
        M.json_schema_metric(tmp_path / "missing.json")
