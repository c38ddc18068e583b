"""The advisor: prompt engineering, RAG, fine-tuning, or fine-tuning + RAG, by fixed, explained rules.

The rules (from the project seed), applied in order:
1. Too little data (< 100 usable examples) or poor data (the check says "fix the data first"):
   prompt engineering first, plus RAG when the information changes often or is knowledge.
2. Information that changes often, or a knowledge goal, needs RAG (fine-tuning bakes facts in
   and cannot be updated without retraining).
3. Style, tone, format and domain behaviour are what fine-tuning teaches.
4. Both needs together (behaviour + changing knowledge), or knowledge with a high budget:
   fine-tuning + RAG, the setup of advanced systems.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

GOALS = ("style", "format", "knowledge", "behaviour")
BUDGETS = ("low", "medium", "high")
PREPARED = "data/prepared"  # where the suggested `data prepare` writes the splits


@dataclass
class Advice:
    """The recommendation, why, and what to run next."""

    recommendation: str  # prompt | rag | fine-tune | fine-tune+rag
    reasons: list[str]
    next_commands: list[str]
    data: dict | None = None  # the check summary's counts and verdict, when --data was given
    inputs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def advise(data: str | Path | None = None, *, changes_often: bool = False, goal: str | None = None,
           budget: str | None = None, format: str | None = None, mapping=None) -> Advice:
    """A deterministic recommendation; `data` (a file) is checked for size and quality first."""
    from tunesmith.errors import DataError

    if goal is not None and goal not in GOALS:
        raise DataError(f"unknown goal '{goal}'", f"use one of: {', '.join(GOALS)}")
    if budget is not None and budget not in BUDGETS:
        raise DataError(f"unknown budget '{budget}'", f"use one of: {', '.join(BUDGETS)}")
    facts = _data_facts(data, format, mapping)
    inputs = {"data": str(data) if data else None, "changes_often": changes_often, "goal": goal, "budget": budget}
    choice, reasons = decide(facts, changes_often=changes_often, goal=goal, budget=budget)
    return Advice(choice, reasons, next_commands(choice, data, pairs=bool(facts and facts.get("pairs"))), facts, inputs)


def _data_facts(data, format, mapping) -> dict | None:
    if data is None:
        return None
    from tunesmith.data.check import CheckOptions, check

    s = check(data, CheckOptions(format=format, mapping=mapping)).summary
    return {"usable_rows": s["usable_rows"], "rows_read": s["rows_read"], "errors": s["errors"],
            "verdict": s["verdict"]["level"], "verdict_message": s["verdict"]["message"],
            "pairs": bool(s.get("pairs"))}


def decide(facts: dict | None, *, changes_often: bool, goal: str | None, budget: str | None) -> tuple[str, list[str]]:
    """The rules above as a pure function: (recommendation, reasons)."""
    reasons: list[str] = []
    needs_rag = changes_often or goal == "knowledge"
    if changes_often:
        reasons.append("the information changes often: keep it in documents RAG retrieves, not in weights "
                       "(RAG retrieves from your examples; add --docs FOLDER of .txt/.md files for documents)")
    elif goal == "knowledge":
        reasons.append("the goal is knowledge: retrieval grounds answers in your documents and can be updated "
                       "(add --docs FOLDER of .txt/.md files to compare or eval)")
    data_ok, why = _data_ok(facts)
    reasons.append(why)
    if not data_ok:
        reasons.append("fine-tuning needs enough clean examples; a good prompt (with few-shot examples) comes first")
        return ("rag" if needs_rag else "prompt"), reasons
    if goal in ("style", "format", "behaviour"):
        reasons.append(f"the goal is {goal}: style, tone, format and domain behaviour are what fine-tuning teaches")
        if needs_rag:
            reasons.append("behaviour and changing information together: fine-tune for the behaviour, RAG for the facts")
            return "fine-tune+rag", reasons
        return "fine-tune", reasons
    if needs_rag:
        if budget == "high":
            reasons.append("with a high budget, fine-tuning on your examples adds the domain's way of answering to RAG")
            return "fine-tune+rag", reasons
        return "rag", reasons
    reasons.append("input -> output examples teach the model your way of answering")
    if budget == "low":
        reasons.append("on a low budget, LoRA on a small model keeps training to minutes on a CPU")
    return "fine-tune", reasons


def _data_ok(facts: dict | None) -> tuple[bool, str]:
    if facts is None:
        return False, "no example data given (--data FILE): there is nothing to fine-tune on yet"
    if facts["verdict"] == "fix-data":
        return False, f"the data needs fixing first ({facts['errors']} error(s)): {facts['verdict_message']}"
    if facts["verdict"] == "too-little":
        return False, f"only {facts['usable_rows']} usable examples: under about 100 is too little to fine-tune on"
    return True, f"{facts['usable_rows']} usable examples: enough to fine-tune on"


def next_commands(choice: str, data: str | Path | None, *, pairs: bool = False) -> list[str]:
    """What to run next for each recommendation: real commands whose arguments parse (a test runs
    each through the CLI's parser), shell-quoted; FILE stands for the data when none was given.
    Preference pairs (`pairs`) train with dpo."""
    from tunesmith.models.store import BUILTIN_NAME

    file = str(data) if data else "FILE"
    check = ["tunesmith", "data", "check", file, "--model", BUILTIN_NAME]
    if choice in ("prompt", "rag"):  # held-out examples to measure the prompt (and retrieval) on
        strategies = "base,prompt" if choice == "prompt" else "base,prompt,rag"
        commands = [check, ["tunesmith", "data", "prepare", file, "--out", PREPARED],
                    ["tunesmith", "compare", "--data", f"{PREPARED}/test.jsonl", "--train", f"{PREPARED}/train.jsonl",
                     "--strategies", strategies, "--out", f"reports/{choice}"]]
    else:
        run = _run_name(file, "dpo" if pairs else "lora")
        strategies = "base,prompt,tuned" if choice == "fine-tune" else "base,rag,tuned,tuned+rag"
        method = ["--set", "method.name=dpo"] if pairs else []
        commands = [check, ["tunesmith", "train", "--set", f"data.train={file}", *method, "--name", run],
                    ["tunesmith", "eval", run, "--strategies", strategies]]
    return [shlex.join(c) for c in commands]


def _run_name(file: str, method: str = "lora") -> str:
    """A valid run name from the data file's name: 'support faq.jsonl' -> 'support-faq-lora'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(file).name.split(".")[0]).strip("-._")
    return f"{stem[:80] or 'my'}-{method}"
