"""Metrics on held-out answers: exact match, token F1, ROUGE-L, BLEU, response loss, and user metrics.

Every metric is computed per example first (so the paired bootstrap in `stats` can resample
examples), then aggregated: most by the mean, BLEU from summed n-gram counts (corpus BLEU, as
sacrebleu does it), loss as total NLL over total answer tokens. Scales: exact_match, token_f1,
rouge_l and user metrics in [0, 1]; bleu in [0, 100] (sacrebleu's); loss in nats per token.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import re
import string
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tunesmith.data.render import pad_batch
from tunesmith.errors import EvalError

# name -> (higher is better, one-line description); the report prints these.
METRICS = {
    "exact_match": (True, "answer equals the reference after normalisation (lowercase, no punctuation/articles)"),
    "token_f1": (True, "F1 of normalised word overlap with the reference"),
    "rouge_l": (True, "ROUGE-L F-measure (rouge-score; words of any script, CJK per character, English stemmed)"),
    "bleu": (True, "corpus BLEU (sacrebleu, 0-100)"),
    "loss": (False, "mean cross-entropy of the reference answer's tokens (incl. end-of-turn), nats"),
    "perplexity": (False, "exp(loss)"),
    "preference_accuracy": (True, "share of preference pairs whose chosen answer gets the higher mean log-probability "
                                  "per token (preference test files only)"),
}
TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


# ------------------------------------------------------------------ text metrics


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lowercase, drop punctuation and English articles, collapse spaces."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of precision and recall of normalised words (1.0 when both are empty)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@functools.cache
def _rouge_scorer():
    """The scorer holds a stemmer: build it once per process."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=WordTokenizer())


# Scripts written without spaces between words: each character is a token (as ROUGE on Chinese
# and Japanese is usually computed). Han (with extensions and compatibility), kana, Thai, Lao,
# Myanmar, Khmer.
_UNSPACED = ((0x2E80, 0x2FDF), (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF),
             (0xF900, 0xFAFF), (0x20000, 0x3134F), (0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF))


class WordTokenizer:
    """ROUGE's tokens for text in any language (rouge-score calls `tokenize(text)`).

    rouge-score's own tokenizer keeps only [a-z0-9], so 'färdigt' loses its 'ä' and a Russian or
    Chinese answer has no tokens at all (ROUGE-L ~0, and the report ranks examples on it). Here a
    token is a run of letters, marks and digits after NFKC and casefolding, or one character of an
    unspaced script; ASCII tokens over 3 characters are Porter-stemmed as rouge-score does, so
    English scores are exactly rouge-score's.
    """

    def __init__(self):
        from nltk.stem import porter

        self.stemmer = porter.PorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        word: list[str] = []
        for ch in unicodedata.normalize("NFKC", text).casefold():
            unspaced = any(lo <= ord(ch) <= hi for lo, hi in _UNSPACED)
            if unicodedata.category(ch)[0] in "LMN" and not unspaced:
                word.append(ch)
                continue
            if word:
                tokens.append(self._stem("".join(word)))
                word = []
            if unspaced and unicodedata.category(ch)[0] in "LMN":
                tokens.append(ch)
        if word:
            tokens.append(self._stem("".join(word)))
        return tokens

    def _stem(self, token: str) -> str:
        return self.stemmer.stem(token) if len(token) > 3 and token.isascii() else token


def bleu_stats(prediction: str, reference: str) -> np.ndarray:
    """Sufficient statistics for corpus BLEU: [sys_len, ref_len, 4 matching counts, 4 totals]."""
    from sacrebleu.metrics import BLEU

    s = BLEU().corpus_score([prediction], [[reference]])
    return np.array([s.sys_len, s.ref_len, *s.counts, *s.totals], dtype=np.float64)


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU from stacked per-example statistics (N, 10), with sacrebleu's default smoothing."""
    from sacrebleu.metrics import BLEU

    total = np.asarray(stats).reshape(-1, 10).sum(axis=0)
    score = BLEU.compute_bleu(correct=[int(x) for x in total[2:6]], total=[int(x) for x in total[6:10]],
                              sys_len=int(total[0]), ref_len=int(total[1]), smooth_method="exp")
    return float(score.score)


# ------------------------------------------------------------------ aggregation


def per_example(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list]:
    """Every text metric for every example; BLEU as statistics (see `aggregate`)."""
    values: dict[str, list] = {name: [] for name in TEXT_METRICS}
    for pred, ref in zip(predictions, references, strict=True):
        values["exact_match"].append(exact_match(pred, ref))
        values["token_f1"].append(token_f1(pred, ref))
        values["rouge_l"].append(rouge_l(pred, ref))
        values["bleu"].append(bleu_stats(pred, ref))
    return values


def aggregate(name: str, values: Sequence[Any]) -> float | None:
    """One number from per-example values: corpus BLEU, pooled loss, or the mean (errors, as None, skipped)."""
    if name == "bleu":
        return bleu_from_stats(np.stack(values)) if len(values) else None
    if name in ("loss", "perplexity"):
        nll, n = np.asarray(values, dtype=np.float64).reshape(-1, 2).sum(axis=0)
        if n == 0:
            return None
        return float(nll / n) if name == "loss" else float(math.exp(nll / n))
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# ------------------------------------------------------------------ loss on the responses


def response_nll(model, tokenizer, conversations: Sequence[Sequence[dict]], *, batch_size: int = 8,
                 max_length: int | None = None, on_batch: Callable[[int], None] | None = None) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of the trained tokens of each conversation.

    The trained tokens are those the renderer's labels keep: assistant turns (with end-of-turn)
    whose `weight` is not 0.
    """
    from tunesmith.data.render import render

    rendered = [render(c, tokenizer, max_length=max_length) for c in conversations]
    return rendered_nll(model, rendered, pad_id=tokenizer.pad_token_id, batch_size=batch_size, on_batch=on_batch)


def rendered_nll(model, rendered: Sequence, *, pad_id: int, batch_size: int = 8,
                 on_batch: Callable[[int], None] | None = None) -> list[tuple[float, int]]:
    """(summed NLL, count) over the labelled tokens of each `Rendered`; right padding, the one evaluation loss."""
    from tunesmith.train.loss import per_row_eval

    out: list[tuple[float, int]] = [(0.0, 0)] * len(rendered)
    order = sorted(range(len(rendered)), key=lambda i: -len(rendered[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in pad_batch([rendered[i] for i in idx], pad_id).items()}
        nll, count, _ = per_row_eval(model, batch)
        for row, i in enumerate(idx):
            out[i] = (float(nll[row]), int(count[row]))
        if on_batch:
            on_batch(len(idx))
    return out


def preference_wins(model, tokenizer, pairs: Sequence[tuple[list[dict], str, str]], *, batch_size: int = 8,
                    on_batch: Callable[[int], None] | None = None) -> list[float]:
    """Per (prompt, chosen, rejected): 1.0 when the model gives the chosen answer the higher mean
    log-probability per token (length-normalised, so a longer answer is not penalised for its length), else 0.0."""
    from tunesmith.train.preference import score_pairs

    examples = [{"messages": p, "chosen": c, "rejected": r} for p, c, r in pairs]
    scores = score_pairs(model, tokenizer, examples, batch_size=batch_size, on_batch=on_batch)
    return [float(c / max(nc, 1) > r / max(nr, 1)) for c, r, nc, nr in scores]


# ------------------------------------------------------------------ user metrics


@dataclass
class UserMetric:
    """A metric the user supplies: `fn(prediction, reference) -> float | bool`. Errors are kept per example."""

    name: str
    fn: Callable[[str, str], Any]

    def score(self, prediction: str, reference: str) -> tuple[float | None, str | None]:
        """(value, None), or (None, 'ExceptionType: message') when the user's function raised."""
        try:
            value = self.fn(prediction, reference)
            return float(value), None
        except Exception as e:  # the user's code: record and go on with the next example
            return None, f"{type(e).__name__}: {e}"[:300]


def python_metric(spec: str) -> UserMetric:
    """'module:function' or 'path/to/file.py:function' -> a UserMetric named after the function."""
    module_name, _, func_name = spec.rpartition(":")
    if not module_name or not func_name:
        raise EvalError(f"--metric {spec!r}: expected module:function", "e.g. --metric my_metrics:polite")
    module = _import_user_module(module_name, spec)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise EvalError(f"--metric {spec!r}: {module_name} has no function '{func_name}'")
    return UserMetric(func_name, fn)


def _import_user_module(module_name: str, spec: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise EvalError(f"--metric {spec!r}: file not found: {path}")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise EvalError(f"--metric {spec!r}: {path} fails to import ({type(e).__name__}: {e})") from None
        return module
    if "" not in sys.path:  # a metric module in the current folder, as `python -m` would find it
        sys.path.insert(0, "")
    try:
        return importlib.import_module(module_name)
    except Exception as e:
        raise EvalError(f"--metric {spec!r}: cannot import '{module_name}' ({type(e).__name__}: {e})",
                        "run from the folder that holds the module, or give a path: file.py:function") from None


def regex_metric(pattern: str) -> UserMetric:
    """1.0 when the answer contains a match of `pattern` (re.search), else 0.0."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise EvalError(f"--regex {pattern!r} is not a valid regular expression ({e})") from None
    return UserMetric("regex", lambda pred, ref: float(compiled.search(pred) is not None))


def json_schema_metric(schema_path: str | Path) -> UserMetric:
    """1.0 when the answer is JSON (optionally inside a ``` fence) that satisfies the schema, else 0.0."""
    import jsonschema

    path = Path(schema_path)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalError(f"--json-schema: file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"--json-schema {path}: not valid JSON ({e})") from None
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise EvalError(f"--json-schema {path}: not a valid JSON schema ({e.message})") from None
    validator = validator_cls(schema)

    def adheres(prediction: str, reference: str) -> float:
        try:
            value = json.loads(_strip_fence(prediction))
        except json.JSONDecodeError:
            return 0.0
        return float(validator.is_valid(value))

    return UserMetric("json_schema", adheres)


def _strip_fence(text: str) -> str:
    match = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    return (match.group(1) if match else text).strip()
