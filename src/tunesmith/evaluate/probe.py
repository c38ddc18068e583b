"""The forgetting probe: general knowledge (BIG-bench, vendored in assets/probes) before and after tuning.

Multiple-choice tasks are scored by the log-likelihood of each choice as the assistant's answer
(through the chat template, the same renderer training used); qa_wikidata by whether the greedy
8-token continuation of the plain-text prompt contains a reference answer. Scores are percentages,
so a change is in points. Evaluation only: these files are never training data (PROVENANCE.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunesmith.errors import EvalError

PROBE_DIR = Path(__file__).resolve().parents[1] / "assets" / "probes"
CHOICE_FILES = {
    "general_knowledge": "bb_general_knowledge.jsonl",
    "human_organs_senses": "bb_human_organs_senses.jsonl",
    "known_unknowns": "bb_known_unknowns.jsonl",
}
QA_FILE = "bb_qa_wikidata_1000.jsonl"
FAST_ROWS = {"choice": 24, "qa": 48}  # per task; about 20 s on the embedded model on 2 CPU cores
QA_NEW_TOKENS = 8


@dataclass(frozen=True)
class ProbeTask:
    name: str
    kind: str  # "choice" | "qa"
    rows: list[dict]


def load_tasks(mode: str = "fast") -> list[ProbeTask]:
    """The probe tasks; `fast` keeps evenly spaced rows of each (the same rows every time)."""
    if mode not in ("fast", "full"):
        raise EvalError(f"unknown probe mode {mode!r}", "use --probe fast, --probe full or --no-probe")
    tasks = [ProbeTask(name, "choice", _read(file)) for name, file in CHOICE_FILES.items()]
    tasks.append(ProbeTask("qa_wikidata", "qa", _read(QA_FILE)))
    if mode == "fast":
        tasks = [ProbeTask(t.name, t.kind, _spread(t.rows, FAST_ROWS[t.kind])) for t in tasks]
    return tasks


def _read(file: str) -> list[dict]:
    path = PROBE_DIR / file
    if not path.is_file():
        raise EvalError(f"probe data missing: {path}", "reinstall tunesmith, or pass --no-probe")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _spread(rows: list[dict], n: int) -> list[dict]:
    if len(rows) <= n:
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def run_probe(model, tokenizer, tasks: list[ProbeTask], *, batch_size: int = 8,
              on_batch: Callable[[int], None] | None = None) -> dict[str, dict]:
    """{task: {"score": percent correct, "n": rows, "correct": [bool per row]}}."""
    out = {}
    for task in tasks:
        scorer = score_choices if task.kind == "choice" else score_qa
        correct = scorer(model, tokenizer, task.rows, batch_size=batch_size, on_batch=on_batch)
        out[task.name] = {"score": 100.0 * sum(correct) / max(len(correct), 1), "n": len(correct), "correct": correct}
    return out


def probe_size(tasks: list[ProbeTask]) -> int:
    """Units of progress `run_probe` reports: one per choice sequence or qa prompt."""
    return sum(sum(len(r["choices"]) for r in t.rows) if t.kind == "choice" else len(t.rows) for t in tasks)


def score_choices(model, tokenizer, rows: list[dict], *, batch_size: int = 8,
                  on_batch: Callable[[int], None] | None = None) -> list[bool]:
    """True where the choice with the highest log-likelihood (summed over its tokens) is the answer.

    Prompted as plain text, "Question: ...\nAnswer: <choice>", like qa_wikidata below: the probe
    measures what the weights know, and a short prompt keeps it cheap (the chat template's default
    system prompt would triple the tokens per choice).
    """
    from tunesmith.data.render import Rendered
    from tunesmith.evaluate.metrics import rendered_nll

    sequences, owners = [], []
    for i, row in enumerate(rows):
        question = f"{row.get('prefix') or ''}{row['question']}".strip()
        prompt = tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
        for choice in row["choices"]:
            answer = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            sequences.append(Rendered(prompt + answer, [0] * len(prompt) + [1] * len(answer)))
            owners.append(i)
    nll = rendered_nll(model, sequences, pad_id=tokenizer.pad_token_id, batch_size=batch_size, on_batch=on_batch)
    scores: list[list[float]] = [[] for _ in rows]
    for (total, _), i in zip(nll, owners):
        scores[i].append(-total)
    return [max(range(len(s)), key=s.__getitem__) == row["answer_idx"] for s, row in zip(scores, rows)]


def score_qa(model, tokenizer, rows: list[dict], *, batch_size: int = 8,
             on_batch: Callable[[int], None] | None = None) -> list[bool]:
    """True where the greedy continuation of the prompt contains one of the answers (case-insensitive)."""
    from tunesmith.models.engine import generate_ids

    # A plain-text completion ("The capital of France is"), not a chat turn: it measures what the
    # weights know, not how the model follows instructions, and it is what the reference scores used.
    prompts = [tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] for row in rows]
    answers = generate_ids(model, tokenizer, prompts, max_new_tokens=QA_NEW_TOKENS, batch_size=batch_size,
                           on_batch=on_batch)
    return [any(a.lower() in g.text.lower() for a in row["answers"]) for g, row in zip(answers, rows)]


def forgetting(base: dict[str, dict], tuned: dict[str, dict], threshold: float) -> dict:
    """Per task: base and tuned score, change in points, and a warning when it drops by more than `threshold`."""
    tasks = {}
    for name, b in base.items():
        t = tuned[name]
        change = t["score"] - b["score"]
        tasks[name] = {"base": b["score"], "tuned": t["score"], "change": change, "n": b["n"],
                       "forgot": change < -threshold}
    warnings = [f"{name}: {v['base']:.1f} -> {v['tuned']:.1f} ({v['change']:+.1f} points)"
                for name, v in tasks.items() if v["forgot"]]
    return {"tasks": tasks, "threshold": threshold, "warnings": warnings}
