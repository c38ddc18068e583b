"""The Train form, generated from the typed config (config.py): one field per key, its help text the
key's docstring, enums as selects; and the form's values back into `--set key=value` overrides, so
the run is validated and started exactly as `tunesmith train --set ...` would be.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from tunesmith.config import Config, describe_keys
from tunesmith.errors import ModelError
from tunesmith.models.store import ModelStore

SECTIONS = ("model", "data", "method", "train")  # what a run is; eval and serve are for later commands
PATH_FIELDS = ("data.train", "data.validation", "data.test")  # picked from the workspace's files


@dataclass(frozen=True)
class Field:
    """One config key as a form field."""

    key: str  # dotted, e.g. train.lr
    label: str
    kind: str  # select | text | number | file
    type: str  # the type as `tunesmith config keys` names it
    help: str
    default: str  # the default as the form shows it ('' = null)
    options: tuple[str, ...] = ()  # for selects ('' = null)
    quoted: bool = False  # a text value: sent to YAML as a JSON string (so 'a: b' stays text)


def fields() -> dict[str, list[Field]]:
    """Section name -> its fields, in declaration order."""
    type_names = {key: type_name for key, type_name, _ in describe_keys()}
    sections = typing.get_type_hints(Config)
    out: dict[str, list[Field]] = {}
    for section in SECTIONS:
        hints = typing.get_type_hints(sections[section])
        out[section] = [_field(f"{section}.{f.name}", f, hints[f.name], type_names[f"{section}.{f.name}"])
                        for f in dataclasses.fields(sections[section])]
    return out


def _field(key: str, f: dataclasses.Field, tp: Any, type_name: str) -> Field:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown = show(default)
    args = _union(tp)
    nullable = type(None) in args
    plain = [a for a in args if a is not type(None)]
    label = key.split(".", 1)[1]
    if key in PATH_FIELDS:
        return Field(key, label, "file", type_name, f.metadata["help"], shown)
    if len(plain) == 1 and typing.get_origin(plain[0]) is Literal:
        options = tuple(str(v) for v in typing.get_args(plain[0]))
        return Field(key, label, "select", type_name, f.metadata["help"], shown, ("",) * nullable + options, True)
    if bool in plain and all(a is bool or typing.get_origin(a) is Literal for a in plain):  # bool, or bool | auto
        words = tuple(str(v) for a in plain if a is not bool for v in typing.get_args(a))
        return Field(key, label, "select", type_name, f.metadata["help"], shown,
                     ("",) * nullable + words + ("true", "false"))
    texty = str in plain and not any(a in (int, float) for a in plain)
    return Field(key, label, "text", type_name, f.metadata["help"], shown, quoted=texty)


def _union(tp: Any) -> tuple:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def show(value: Any) -> str:
    """A config value as the form shows it: null is '', lists are comma-separated, booleans lower case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def model(value: str, resolve_path) -> str:
    """A model as the browser names it: a store name as it is, anything else a model folder or GGUF file
    inside the workspace (absolute, resolved). The store tells names from paths (ModelStore.knows)."""
    store = ModelStore()
    if store.knows(value):
        return value
    path = resolve_path(value, must_exist=False)  # UiPathError for an absolute path, '..', a symlink out
    if not path.exists():
        raise ModelError(f"unknown model '{value}': not a store model, nor a folder or file in the workspace",
                         f"known models: {', '.join(store.names())}; or copy the model folder into the workspace")
    return str(path)


def yaml_text(value: str) -> str:
    """`value` as a YAML string for `--set` (a JSON string is one): 'a #b.jsonl' or 'x: y' stay text, and
    non-ASCII stays as it is (a \\ud83d escape would come back from the YAML parser as a lone surrogate)."""
    return json.dumps(value, ensure_ascii=False)


def overrides(values: dict[str, str], resolve_path) -> list[str]:
    """`--set` items for every field whose value differs from its default (unknown keys are passed on, so
    the config code names them as it does for the CLI). `resolve_path(rel)` turns a workspace path into
    an absolute one (and refuses one outside)."""
    known = {f.key: f for section in fields().values() for f in section}
    out = []
    for key, raw in values.items():
        value = (raw or "").strip()
        spec = known.get(key)
        if spec is not None and value == spec.default:
            continue
        if value and key in PATH_FIELDS:
            value = yaml_text(str(resolve_path(value)))
        elif value and key == "model.name":
            value = yaml_text(model(value, resolve_path))
        elif spec is not None and spec.quoted and value:
            value = yaml_text(value)
        out.append(f"{key}={value}")
    return out
