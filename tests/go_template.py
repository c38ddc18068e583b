"""A tiny renderer for the subset of Go's text/template that tunesmith's Ollama templates use (tests only).

Covers: text, `{{- ... -}}` trimming, `if / else if / else / end`, `range PIPE` and
`range $i, $_ := PIPE`, `$x := PIPE` and `$x = PIPE`, fields (`.Role`, `$.System`, `$x`), string
literals, parentheses and the functions eq, and, or, not, len, slice. Truthiness is Go's: empty
strings, empty lists, 0, false and nil are false. It is checked here against hand-written Go
semantics, not against Go itself (Go is not installed where the tests run).
"""

from __future__ import annotations

import re
from typing import Any

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\(|\)|:=|=|,|[^\s(),]+')


def render(template: str, data: dict[str, Any]) -> str:
    nodes, _ = _parse(_lex(template), 0)
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, str]]:
    """[('text', s) | ('action', body)] with the trim markers applied to the neighbouring text."""
    parts: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        parts += [("text", text), ("action", m.group(2).strip())]
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    parts.append(("text", tail.lstrip() if trim_next else tail))
    return parts


def _parse(parts, i):
    """Nodes until an `end`/`else` at this level: returns (nodes, index of that keyword part)."""
    nodes = []
    while i < len(parts):
        kind, body = parts[i]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else"):
            return nodes, i
        if word == "if":
            node, i = _parse_if(parts, i, body[2:].strip())
            nodes.append(node)
        elif word == "range":
            inner, j = _parse(parts, i + 1)
            nodes.append(("range", body[5:].strip(), inner))
            i = j + 1
        else:
            nodes.append(("expr", body))
            i += 1
    return nodes, i


def _parse_if(parts, i, cond):
    branches, otherwise = [], []
    while True:
        inner, j = _parse(parts, i + 1)
        branches.append((cond, inner))
        body = parts[j][1]
        if body == "end":
            return ("if", branches, otherwise), j + 1
        if body.startswith("else if"):
            cond, i = body[7:].strip(), j
            continue
        otherwise, k = _parse(parts, j + 1)
        return ("if", branches, otherwise), k + 1


def _run(nodes, dot, scope, out) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            value = _statement(node[1], dot, scope)
            if value is not None:
                out.append(str(value))
        elif node[0] == "if":
            for cond, inner in node[1]:
                if _truthy(_eval(cond, dot, scope)):
                    _run(inner, dot, scope, out)
                    break
            else:
                _run(node[2], dot, scope, out)
        else:
            _range(node[1], node[2], dot, scope, out)


def _range(head, inner, dot, scope, out) -> None:
    names, _, pipe = head.rpartition(":=")
    items = _eval(pipe.strip(), dot, scope)
    for index, item in enumerate(items or []):
        local = dict(scope)
        bound = [n.strip() for n in names.split(",")] if names else []
        if len(bound) == 2:
            local[bound[0]], local[bound[1]] = index, item
        _run(inner, item, local, out)
        scope.update({k: v for k, v in local.items() if k in scope})  # `$x = ...` reaches the outer variable


def _statement(body, dot, scope):
    tokens = TOKEN.findall(body)
    if len(tokens) > 2 and tokens[0].startswith("$") and tokens[1] in (":=", "="):
        scope[tokens[0]] = _eval_tokens(tokens[2:], dot, scope)
        return None
    return _eval_tokens(tokens, dot, scope)


def _eval(text, dot, scope):
    return _eval_tokens(TOKEN.findall(text), dot, scope)


def _eval_tokens(tokens, dot, scope):
    args, i = [], 0
    while i < len(tokens):
        if tokens[i] == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                j += 1
            args.append(_eval_tokens(tokens[i + 1:j - 1], dot, scope))
            i = j
            continue
        args.append(tokens[i])
        i += 1
    head = args[0]
    if isinstance(head, str) and head in FUNCS:
        return FUNCS[head](*[_operand(a, dot, scope) for a in args[1:]])
    return _operand(head, dot, scope)


def _operand(token, dot, scope):
    if not isinstance(token, str):
        return token
    if token.isdigit():
        return int(token)
    if token.startswith('"'):
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    if token.startswith("$"):
        name, _, path = token.partition(".")
        value = scope[name]
    elif token.startswith("."):
        value, path = dot, token[1:]
    else:
        raise ValueError(f"unsupported token {token!r}")
    for field in filter(None, path.split(".")):
        value = value.get(field) if isinstance(value, dict) else getattr(value, field)
    return value


def _truthy(value) -> bool:
    return bool(value)


FUNCS = {
    "eq": lambda a, b: a == b,
    "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
    "or": lambda *a: next((x for x in a if _truthy(x)), a[-1]),
    "not": lambda a: not _truthy(a),
    "len": len,
    "slice": lambda seq, start=0, end=None: seq[start:end],
}
