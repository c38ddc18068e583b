"""Input formats: detect one from the keys, and normalise every row to canonical chat messages.

Canonical examples are `{"messages": [{"role", "content"[, "weight"]}, ...], "line": N}`,
`{"text": "...", "line": N}`, or a preference pair `{"messages": [the prompt, ending with a user
turn], "chosen": "...", "rejected": "...", "line": N}` (`is_preference`). The formats and one
example line each are in docs/data-formats.md.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tunesmith.data.render import with_system
from tunesmith.data.rules import Finding, finding, is_error
from tunesmith.data.sources import RawRow, iter_raw
from tunesmith.errors import DataError

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant"}
PAIRS = (("input", "output"), ("question", "answer"), ("prompt", "response"))
FORMATS = ("messages", "sharegpt", "alpaca", "prompt-completion", "input-output", "text", "preference",
           "openai-preference")
PREFERENCE_FORMATS = ("preference", "openai-preference")
ALIASES = {"chat": "messages", "openai": "messages", "conversations": "sharegpt", "completion": "prompt-completion",
           "pairs": "input-output", "question-answer": "input-output", "prompt-response": "input-output",
           "dpo": "preference", "trl-preference": "preference", "openai-dpo": "openai-preference"}
DETECT_ROWS = 50  # detection looks at this many readable rows
# Half of a UTF-16 surrogate pair, from a JSON escape such as "\ud800": not a character, so
# neither a tokenizer nor a UTF-8 file can hold it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Row:
    """One source row after normalisation: `example` is None when the row has errors.

    `fields` names the source field of each canonical message (for findings, e.g. 'output').
    """

    line: int
    example: dict | None
    fields: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    raw: dict | None = None  # the source row as read (None when it could not be parsed)


@dataclass
class ReadResult:
    """Every usable example, every finding, and how many rows were read (usable or not)."""

    examples: list[dict]
    findings: list[Finding]
    rows_read: int
    format: str | None = None


def parse_mapping(mapping: str | dict[str, str] | None) -> dict[str, str]:
    """'input=question,output=answer' -> {'question': 'input', 'answer': 'output'} (source -> canonical)."""
    if not mapping:
        return {}
    pairs = mapping.items() if isinstance(mapping, dict) else (p.split("=", 1) for p in mapping.split(",") if p.strip())
    out: dict[str, str] = {}
    for item in pairs:
        if len(item) != 2 or not item[0].strip() or not item[1].strip():
            raise DataError(f"--map {mapping!r}: expected canonical=source pairs", "e.g. --map input=question,output=answer")
        canonical, source = item[0].strip(), item[1].strip()
        out[source] = canonical
    return out


def resolve_format(name: str | None) -> str | None:
    """A --format value (or alias) -> a format id; DataError naming the valid ones."""
    if name is None:
        return None
    fmt = ALIASES.get(name.lower(), name.lower())
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{name}'", f"use one of: {', '.join(FORMATS)}")
    return fmt


def detect_format(obj: dict) -> str | None:
    """The format a row's keys say it is in, or None."""
    keys = obj.keys()
    # before the others: TRL's pairs share "prompt" with prompt-completion, and exports such as
    # UltraFeedback's carry a "messages" column beside "chosen" and "rejected"
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "openai-preference"
    if "chosen" in keys or "rejected" in keys:
        return "preference"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt-completion"
    if any(a in keys and b in keys for a, b in PAIRS):
        return "input-output"
    if "text" in keys:
        return "text"
    return None


class Reader:
    """Iterate the normalised rows of a file, streaming. `.format` and `.rows_read` fill in as it goes."""

    def __init__(self, path: str | Path, *, format: str | None = None, mapping: Any = None, system: str | None = None):
        self.path = Path(path)
        self.requested = resolve_format(format)
        self.mapping = parse_mapping(mapping)
        self.system = system or None
        self.format: str | None = self.requested
        self.rows_read = 0
        self.file_findings: list[Finding] = []

    def __iter__(self) -> Iterator[Row]:
        raw = iter_raw(self.path)
        head: list[RawRow] = []
        for r in raw:  # buffer the first rows to detect the format, then replay them
            head.append(r)
            if sum(1 for h in head if h.obj is not None) >= DETECT_ROWS:
                break
        if self.format is None:
            self.format = self._detect(head)
        for r in _chain(head, raw):
            row = self._row(r)
            if row is not None:
                yield row

    def _row(self, r: RawRow) -> Row | None:
        if r.line == 0:
            self.file_findings.append(r.problem)
            return None
        self.rows_read += 1
        if r.obj is None:
            return Row(r.line, None, [], [r.problem])
        if self.format is None:  # detection failed: reported once at file level
            return Row(r.line, None, [], [])
        obj = {self.mapping.get(k, k): v for k, v in r.obj.items()} if self.mapping else r.obj
        row = normalise(obj, self.format, r.line, system=self.system)
        row.raw = r.obj
        row.findings += r.notes
        return row

    def _detect(self, head: list[RawRow]) -> str | None:
        objs = [h.obj for h in head if h.obj is not None]
        if not objs:
            return None
        mapped = [{self.mapping.get(k, k): v for k, v in o.items()} for o in objs]
        votes = collections.Counter(f for f in map(detect_format, mapped) if f)
        if votes:
            return votes.most_common(1)[0][0]
        keys = ", ".join(repr(k) for k in list(mapped[0])[:8]) or "none"
        where = "the header row" if self.path.suffix.lower() in (".csv", ".tsv") else f"line {head[0].line}"
        self.file_findings.append(finding(head[0].line, "", "format.unknown", f"no known format in the fields of {where} ({keys})"))
        return None


def _chain(head: list[RawRow], rest: Iterator[RawRow]) -> Iterator[RawRow]:
    yield from head
    yield from rest


def read_examples(path: str | Path, *, format: str | None = None, mapping: Any = None,
                  system: str | None = None) -> ReadResult:
    """Read and normalise a whole file. Rows with errors are left out of `.examples` and reported in `.findings`."""
    reader = Reader(path, format=format, mapping=mapping, system=system)
    examples: list[dict] = []
    findings: list[Finding] = []
    for row in reader:
        findings.extend(row.findings)
        if row.example is not None:
            examples.append(row.example)
    findings = reader.file_findings + findings
    return ReadResult(examples, findings, reader.rows_read, reader.format)


# ------------------------------------------------------------------ normalising one row


def is_preference(example: dict) -> bool:
    """Is this canonical example a preference pair (prompt `messages`, `chosen`, `rejected`)?"""
    return "chosen" in example


def normalise(obj: dict, fmt: str, line: int, *, system: str | None = None) -> Row:
    """One source row in format `fmt` -> a Row with a canonical example, or with the findings that stop it."""
    if fmt == "text":
        return _text_row(obj, line)
    if fmt in PREFERENCE_FORMATS:
        return _pair_row(obj, fmt, line, system=system)
    build = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca,
             "prompt-completion": _from_pair, "input-output": _from_pair}[fmt]
    messages, fields, findings = build(obj, line, fmt)
    if messages is None:
        return Row(line, None, [], findings)
    row_system = obj.get("system") if fmt != "messages" else None
    system = row_system.strip() if isinstance(row_system, str) and row_system.strip() else system
    with_prompt = with_system(messages, system)  # the rule a served run's chat template repeats
    if len(with_prompt) > len(messages):
        fields.insert(0, "system" if row_system else "--system")
    messages = with_prompt
    findings += check_conversation(messages, fields, line)
    ok = not any(is_error(f) for f in findings)
    return Row(line, {"messages": messages, "line": line} if ok else None, fields, findings)


def _text_row(obj: dict, line: int) -> Row:
    text, problem = _string(obj, "text", line)
    if problem:
        return Row(line, None, [], [problem])
    return Row(line, {"text": text, "line": line}, ["text"], [])


def _string(obj: dict, key: str, line: int, *, label: str | None = None, optional: bool = False) -> tuple[str, Finding | None]:
    """obj[key] as stripped text, or a finding: missing, empty, or not a string."""
    label = label or key
    if key not in obj:
        return "", None if optional else finding(line, label, "field.missing", f"'{label}' is missing")
    value = obj[key]
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):  # OpenAI content parts
        texts = [p.get("text", "") for p in value if p.get("type", "text") == "text"]
        if all(isinstance(t, str) for t in texts):  # otherwise reported as a wrong type below
            value = "".join(texts)
    if value is None or (isinstance(value, str) and not value.strip()):
        return "", None if optional else finding(line, label, "field.empty", f"'{label}' is empty")
    if not isinstance(value, str):
        return "", finding(line, label, "field.type", f"'{label}' is a {_type(value)}, not a string")
    if bad := _LONE_SURROGATE.search(value):
        what = f"'{label}' holds \\u{ord(bad.group()):04x}, half of a surrogate pair, which is not a character"
        return "", finding(line, label, "text.invalid", what)
    return value.strip(), None


def _type(value: Any) -> str:
    return {dict: "JSON object", list: "list", bool: "boolean", int: "number", float: "number"}.get(type(value), type(value).__name__)


def _from_pair(obj: dict, line: int, fmt: str):
    keys = [("prompt", "completion")] if fmt == "prompt-completion" else [p for p in PAIRS if p[0] in obj or p[1] in obj] or [PAIRS[0]]
    in_key, out_key = keys[0]
    user, p1 = _string(obj, in_key, line)
    answer, p2 = _string(obj, out_key, line)
    problems = [p for p in (p1, p2) if p]
    if problems:
        return None, [], problems
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], [in_key, out_key], []


def _from_alpaca(obj: dict, line: int, fmt: str):
    instruction, p1 = _string(obj, "instruction", line)
    extra, p2 = _string(obj, "input", line, optional=True)
    answer, p3 = _string(obj, "output", line)
    problems = [p for p in (p1, p2, p3) if p]
    if problems:
        return None, [], problems
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], ["instruction", "output"], []


def _from_messages(obj: dict, line: int, fmt: str):
    return _turns(obj, "messages", "role", "content", line, lambda r: r if r in ROLES else None)


def _from_sharegpt(obj: dict, line: int, fmt: str):
    return _turns(obj, "conversations", "from", "value", line, lambda r: SHAREGPT_ROLES.get(r.lower()))


def _turns(obj: dict, key: str, role_key: str, text_key: str, line: int, role_of, *, label: str | None = None):
    """obj[key] as canonical messages, each message's source field, and the problems; `label` names the field."""
    turns, problem = _list_field(obj, key, line, label=label)
    if problem:
        return None, [], [problem]
    messages, fields, problems = [], [], []
    for i, turn in enumerate(turns):
        label_i = f"{label or key}[{i}]"
        if not isinstance(turn, dict):
            problems.append(finding(line, label_i, "field.type", f"'{label_i}' is a {_type(turn)}, not an object"))
            continue
        message, found = _turn(turn, label_i, role_key, text_key, line, role_of)
        problems += found
        if message is not None:
            messages.append(message)
            fields.append(f"{label_i}.{text_key}")
    return (None if problems else messages), fields, problems


def _list_field(obj: dict, key: str, line: int, *, label: str | None = None) -> tuple[list, Finding | None]:
    label = label or key
    try:
        value = json_list(obj.get(key))
    except ValueError:
        return [], finding(line, label, "field.type", f"'{label}' is text that is not a valid JSON list")
    if key not in obj:
        return [], finding(line, label, "field.missing", f"'{label}' is missing")
    if not isinstance(value, list):
        return [], finding(line, label, "field.type", f"'{label}' is a {_type(value)}, not a list of messages")
    if not value:
        return [], finding(line, label, "field.empty", f"'{label}' is an empty list")
    return value, None


def json_list(value: Any) -> Any:
    """A JSON list held as text (a CSV cell) parsed, any other value as it is; ValueError for text that is not JSON."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except RecursionError as e:
            raise ValueError("nested too deeply") from e  # json.JSONDecodeError is a ValueError already
    return value


def _turn(turn: dict, label: str, role_key: str, text_key: str, line: int, role_of):
    problems = []
    raw_role = turn.get(role_key)
    role = role_of(raw_role) if isinstance(raw_role, str) else None
    if role_key not in turn:
        problems.append(finding(line, f"{label}.{role_key}", "field.missing", f"'{label}.{role_key}' is missing"))
    elif role is None:
        problems.append(finding(line, f"{label}.{role_key}", "role.unknown", f"unknown role {raw_role!r}"))
    content, problem = _string(turn, text_key, line, label=f"{label}.{text_key}")
    if problem and not (problem.rule == "field.empty" and role == "system"):
        problems.append(problem)
    weight = turn.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, str):
        problems.append(finding(line, f"{label}.weight", "field.type", f"'{label}.weight' is {weight!r}; it must be 0 or 1"))
    if problems:
        return None, problems
    message = {"role": role, "content": content}
    if "weight" in turn:
        message["weight"] = int(weight)
    return message, []


def check_conversation(messages: list[dict], fields: list[str], line: int, *, prompt: bool = False) -> list[Finding]:
    """Order rules: system only first; user and assistant alternate from a user turn; an assistant is trained.

    `prompt`: the conversation is a preference pair's prompt, which has no assistant turn to train
    and must end with the user turn the answers reply to (`pair.prompt`).
    """
    problems: list[Finding] = []
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, m in enumerate(body):
        index = i + len(messages) - len(body)
        label = fields[index].rsplit(".", 1)[0] if index < len(fields) else f"messages[{index}]"
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            what = (f"a system message at position {index + 1} (only the first message may be system)"
                    if m["role"] == "system" else f"'{m['role']}' at position {index + 1} where '{expected}' should be")
            problems.append(finding(line, label, "role.order", what))
            break
    if prompt:
        if not problems and (not body or body[-1]["role"] != "user"):
            what = ("the prompt has no user turn" if not body
                    else "the prompt ends with an assistant turn, not the user turn the answers reply to")
            problems.append(finding(line, fields[-1].rsplit(".", 1)[0] if body and fields else "", "pair.prompt", what))
        return problems
    trained = [m for m in body if m["role"] == "assistant" and m.get("weight", 1)]
    if not trained:
        what = "no assistant turn" if not any(m["role"] == "assistant" for m in body) else "every assistant turn has weight 0"
        problems.append(finding(line, "", "turn.no_assistant", what))
    elif not problems and body and body[-1]["role"] == "user":
        problems.append(finding(line, fields[-1] if fields else "", "turn.ends_with_user", "the conversation ends with a user turn"))
    return problems


# ------------------------------------------------------------------ preference pairs


def _pair_row(obj: dict, fmt: str, line: int, *, system: str | None = None) -> Row:
    """A preference row -> {"messages": the prompt, "chosen", "rejected", "line"}, every problem at once.

    The prompt follows the order rules and ends with a user turn (`check_conversation(prompt=True)`);
    the answers are two different texts (`pair.same`). `fields` names the prompt's source fields,
    then the chosen and the rejected answer's.
    """
    parse = _openai_pair if fmt == "openai-preference" else _trl_pair
    prompt, fields, answers, problems = parse(obj, line)
    if prompt is not None:
        row_system = obj.get("system")
        system = row_system.strip() if isinstance(row_system, str) and row_system.strip() else system
        with_prompt = with_system(prompt, system)
        if len(with_prompt) > len(prompt):
            fields.insert(0, "system" if row_system else "--system")
        prompt = with_prompt
        problems += check_conversation(prompt, fields, line, prompt=True)
    (chosen, chosen_field), (rejected, rejected_field) = answers
    if chosen is not None and rejected is not None and chosen.split() == rejected.split():
        problems.append(finding(line, rejected_field, "pair.same", "'chosen' and 'rejected' are the same answer"))
    if prompt is None or chosen is None or rejected is None or any(is_error(f) for f in problems):
        return Row(line, None, fields, problems)
    example = {"messages": prompt, "chosen": chosen, "rejected": rejected, "line": line}
    return Row(line, example, fields + [chosen_field, rejected_field], problems)


def _role(raw: str) -> str | None:
    return raw if raw in ROLES else None


def _trl_pair(obj: dict, line: int):
    """TRL's pairs: a prompt (text or messages; tunesmith's own splits call it "messages") and two answers."""
    key = "prompt" if "prompt" in obj else "messages" if "messages" in obj else None
    if key is None or all(_is_conversation(obj.get(side)) for side in ("chosen", "rejected")):
        # UltraFeedback's rows: a prompt beside two whole conversations, which carry it themselves
        # (as TRL's maybe_extract_prompt reads them)
        return _implicit_pair(obj, line)
    prompt, fields, problems = _prompt(obj, key, line)
    answers = [_answer(obj, side, line) for side in ("chosen", "rejected")]
    problems += [p for _, _, found in answers for p in found]
    return prompt, fields, [(text, label) for text, label, _ in answers], problems


def _openai_pair(obj: dict, line: int):
    """OpenAI's DPO format: input.messages, then preferred_output and non_preferred_output (one assistant message each)."""
    prompt, fields, problems = None, [], []
    given = obj.get("input")
    if "input" not in obj:
        problems.append(finding(line, "input", "field.missing", "'input' is missing"))
    elif not isinstance(given, dict):
        problems.append(finding(line, "input", "field.type", f"'input' is a {_type(given)}, not an object with 'messages'"))
    else:
        prompt, fields, found = _turns(given, "messages", "role", "content", line, _role, label="input.messages")
        problems += found
    answers = [_answer(obj, side, line) for side in ("preferred_output", "non_preferred_output")]
    problems += [p for _, _, found in answers for p in found]
    return _bare(prompt), fields, [(text, label) for text, label, _ in answers], problems


def _prompt(obj: dict, key: str, line: int) -> tuple[list | None, list[str], list[Finding]]:
    """obj[key] as prompt messages: a string is one user turn, a list is a conversation."""
    value = _list_or_text(obj[key])
    if not isinstance(value, list):
        text, problem = _string(obj, key, line)
        return (None, [], [problem]) if problem else ([{"role": "user", "content": text}], [key], [])
    messages, fields, problems = _turns({key: value}, key, "role", "content", line, _role)
    return _bare(messages), fields, problems


def _answer(obj: dict, side: str, line: int) -> tuple[str | None, str, list[Finding]]:
    """(the answer text, its field, its problems): a string, or a list of exactly one assistant message."""
    value = _list_or_text(obj.get(side))
    if not isinstance(value, list):
        text, problem = _string(obj, side, line)
        return (None, side, [problem]) if problem else (text, side, [])
    if len(value) != 1:
        what = "is an empty list" if not value else f"holds {len(value)} messages"
        return None, side, [finding(line, side, "pair.answer", f"'{side}' {what}, not one assistant message")]
    messages, fields, problems = _turns({side: value}, side, "role", "content", line, _role)
    if problems:
        return None, side, problems
    if messages[0]["role"] != "assistant":
        return None, fields[0], [finding(line, fields[0].rsplit(".", 1)[0], "pair.answer",
                                         f"'{side}' is a '{messages[0]['role']}' message, not an assistant one")]
    return messages[0]["content"], fields[0], []


def _list_or_text(value: Any) -> Any:
    """A JSON list held as text (a CSV cell) parsed; text that only looks like one (it starts with "[") kept."""
    try:
        return json_list(value)
    except ValueError:
        return value


def _is_conversation(value: Any) -> bool:
    """A whole conversation (it has a turn that is not the assistant's), not just an answer."""
    value = _list_or_text(value)
    return isinstance(value, list) and any(isinstance(m, dict) and m.get("role") not in ("assistant", "gpt")
                                           for m in value)


def _implicit_pair(obj: dict, line: int):
    """Only "chosen" and "rejected", two whole conversations: the prompt is what they share before the last turn."""
    conversations, fields, problems = {}, {}, []
    for side in ("chosen", "rejected"):
        value = _list_or_text(obj.get(side))
        if side in obj and not isinstance(value, list):  # an answer as text needs its prompt
            if not any(p.field == "prompt" for p in problems):
                problems.append(finding(line, "prompt", "field.missing",
                                        f"'prompt' is missing ('{side}' is not a whole conversation)"))
            continue
        conversations[side], fields[side], found = _turns({side: value} if side in obj else {}, side, "role",
                                                          "content", line, _role)
        problems += found
    answers = [(None, "chosen"), (None, "rejected")]
    if problems:
        return None, [], answers, problems
    chosen, rejected = conversations["chosen"], conversations["rejected"]
    problem = _prefix_problem(chosen, rejected, fields, line)
    if problem:
        return None, [], answers, [problem]
    answers = [(chosen[-1]["content"], fields["chosen"][-1]), (rejected[-1]["content"], fields["rejected"][-1])]
    return _bare(chosen[:-1]), fields["chosen"][:-1], answers, []


def _prefix_problem(chosen: list[dict], rejected: list[dict], fields: dict, line: int) -> Finding | None:
    """pair.prefix unless both conversations end with an assistant turn and are the same before it."""
    for side, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            return finding(line, fields[side][-1].rsplit(".", 1)[0], "pair.prefix",
                           f"'{side}' ends with a '{messages[-1]['role']}' turn, not the assistant answer")
    same = [(a["role"], a["content"]) == (b["role"], b["content"]) for a, b in zip(chosen[:-1], rejected[:-1])]
    if len(chosen) == len(rejected) and all(same):
        return None
    at = same.index(False) if not all(same) else min(len(chosen), len(rejected)) - 1
    return finding(line, f"rejected[{at}]", "pair.prefix",
                   f"'chosen' and 'rejected' differ at message {at + 1} (of {len(chosen)} and {len(rejected)}), "
                   "before their last assistant turn")


def _bare(messages: list[dict] | None) -> list[dict] | None:
    """Prompt messages without `weight`: nothing in a prompt is trained."""
    return None if messages is None else [{"role": m["role"], "content": m["content"]} for m in messages]
