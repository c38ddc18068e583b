"""The strategies compared on the same examples: what each one puts in the prompt, and which model answers.

- base:      the base model, the example's own conversation (through its chat template)
- prompt:    the base model, a system prompt and k few-shot examples from the training split
- rag:       the base model and the top-k retrieved training examples as few-shot turns (dynamic
             few-shot: the model sees the answer format, not prose about it), or, with --docs, the
             top-k document chunks in the system prompt
- tuned:     the fine-tuned run, the example's own conversation
- tuned+rag: the fine-tuned run with the rag prompt

A comparison only proves something when the untuned strategies are as good as a careful user
would make them: retrieved examples written into the system message as "Question/Answer" prose
made the base model answer in prose (text-to-SQL token F1 0.045, below plain few-shot's 0.163).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

from tunesmith.errors import EvalError

STRATEGIES = ("base", "prompt", "rag", "tuned", "tuned+rag")
RAG_HEADER = "Use the following reference material if it helps you answer."


@dataclass(frozen=True)
class Case:
    """One held-out example: the conversation up to the answer, the reference answer, its source line."""

    prompt: list[dict]
    reference: str
    line: int | None = None
    rejected: str | None = None  # a preference pair's other answer (the reference is the chosen one)

    @property
    def query(self) -> str:
        """The last user message: what retrieval searches with."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


@dataclass
class Context:
    """What the prompt and rag strategies add: a system prompt, few-shot turns, and per case what was retrieved.

    `retrieved[strategy][i]` is the i-th case's top-k, best first: training examples (Case), given as
    few-shot turns, or document chunks (str), given in the system message.
    """

    system: str | None = None
    shots: list[dict] = field(default_factory=list)
    retrieved: dict[str, list[list[Case | str]]] = field(default_factory=dict)


def with_answer(prompt: Sequence[dict], answer: str) -> list[dict]:
    """`prompt` + `answer` as the only trained turn (few-shot and earlier assistant turns get weight 0)."""
    before = [{**m, "weight": 0} if m["role"] == "assistant" else dict(m) for m in prompt]
    return before + [{"role": "assistant", "content": answer}]


def parse_strategies(names: str | Sequence[str]) -> list[str]:
    """'base,prompt' or a list -> validated names in the order given, without repeats."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [n.strip() for n in names]
    out: list[str] = []
    for name in filter(None, items):
        if name not in STRATEGIES:
            raise EvalError(f"unknown strategy '{name}'", f"choose from {', '.join(STRATEGIES)}")
        if name not in out:
            out.append(name)
    if not out:
        raise EvalError("no strategies to compare", f"choose from {', '.join(STRATEGIES)}")
    return out


def uses_tuned(name: str) -> bool:
    return name.startswith("tuned")


def uses_rag(name: str) -> bool:
    return name.endswith("rag")


def to_case(example: dict) -> Case | None:
    """A canonical example -> Case, or None when it has no assistant answer to compare against.

    A preference pair's case is its prompt, with the chosen answer as the reference."""
    messages = example.get("messages")
    if not messages:
        return None
    if "chosen" in example:
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages]
        if prompt[-1]["role"] != "user":
            return None
        return Case(prompt, example["chosen"], example.get("line"), example["rejected"])
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not any(m["role"] == "user" for m in messages[:last]):
        return None
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    return Case(prompt, messages[last]["content"], example.get("line"))


def few_shot(train: Sequence[Case], k: int, seed: int) -> list[dict]:
    """k training examples (seeded pick, the same for every test case) as user/assistant turns."""
    return as_turns(random.Random(seed).sample(list(train), min(k, len(train))))


def as_turns(cases: Sequence[Case]) -> list[dict]:
    """Training examples as user/assistant turns, in the order given (their system messages left out)."""
    turns: list[dict] = []
    for case in cases:
        turns += [m for m in case.prompt if m["role"] != "system"]
        turns.append({"role": "assistant", "content": case.reference})
    return turns


def passage(case: Case) -> str:
    """A training example as a retrievable passage."""
    return f"Question: {case.query}\nAnswer: {case.reference}"


def build_prompt(strategy: str, case: Case, index: int, ctx: Context) -> list[dict]:
    """The conversation `strategy` gives the model for the `index`-th case."""
    if strategy in ("base", "tuned"):
        return case.prompt
    if strategy == "prompt":
        return with_shots(case.prompt, ctx.shots, ctx.system)
    hits = ctx.retrieved[strategy][index]
    if all(isinstance(h, Case) for h in hits):  # the nearest example last, right before the question
        return with_shots(case.prompt, as_turns(list(reversed(hits))), ctx.system)
    return with_passages(case.prompt, hits)


def with_shots(messages: list[dict], shots: list[dict], system: str | None) -> list[dict]:
    """System prompt (`system`, else the conversation's own), then the few-shot turns, then the conversation."""
    own = [m for m in messages if m["role"] != "system"]
    system = system or _system_of(messages)
    return ([{"role": "system", "content": system}] if system else []) + shots + own


def with_passages(messages: list[dict], passages: Sequence[str]) -> list[dict]:
    """Put numbered passages into the system message (after the existing system prompt, if any)."""
    own = [m for m in messages if m["role"] != "system"]
    blocks = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    system = "\n\n".join(filter(None, [_system_of(messages), RAG_HEADER, blocks]))
    return [{"role": "system", "content": system}] + own


def _system_of(messages: Sequence[dict]) -> str | None:
    return next((m["content"] for m in messages if m["role"] == "system"), None)
