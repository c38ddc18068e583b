"""Typed, frozen config per concern; defaults < YAML file < `--set key=value`; every error at once.

Paths (PATH_KEYS) come out of load_config absolute: a relative path written in a YAML file is
relative to that file's folder, so `tunesmith train some/where/config.yaml` works from any
folder; one given with `--set`, and the default `output_dir`, are relative to the current
folder. The run folder's saved config.yaml therefore means the same from anywhere (resume).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from tunesmith.errors import ConfigError

Auto = Literal["auto"]  # a key whose value tunesmith chooses from the data (train/auto.py, docs/auto.md)


def opt(default: Any, help: str, *, secret: bool = False) -> Any:
    """A config field with its one-line help (shown by `--help` and `tunesmith config keys`).

    A `secret` key is never written to disk by `to_yaml` (see there).
    """
    meta = {"help": help, "secret": secret}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    name: str = opt("smollm2-135m-instruct", "a model store name, a local model folder (./folder), or a GGUF file")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "weights dtype when loading; auto = float32 on CPU, bfloat16 on a GPU that supports it")
    allow_pickle: bool = opt(False, "allow .bin/.pt pickle weights (they can run code when loaded)")
    device: str = opt("auto", "where evaluation, chat and serving run: auto = a CUDA GPU when present, else the CPU; "
                      "cpu, cuda or cuda:N (training is placed by accelerate)")


@dataclass(frozen=True)
class DataConfig:
    train: str | None = opt(None, "training data: a raw file (prepared on the fly) or a prepared split")
    validation: str | None = opt(None, "validation data; when null, split off from train")
    test: str | None = opt(None, "held-out test data; when null, split off from train")
    system: str | None = opt(None, "system prompt added to every conversation that has none")
    format: str | None = opt(None, "input format; null = detect from the keys (see docs/data-formats.md)")
    map: str | None = opt(None, "rename fields before detection, e.g. 'input=question,output=answer'")
    split: str = opt("80/10/10", "train/validation/test percentages used when splitting a raw file")
    near_duplicates: Literal["keep", "drop"] = opt(
        "keep", "keep or drop near duplicates: input and answer near copies (docs/data-quality.md); exact copies always go")
    max_length: int = opt(1024, "longest sequence in tokens; longer rows are truncated (and reported)")


@dataclass(frozen=True)
class MethodConfig:
    name: Literal["lora", "full", "qlora", "dpo", "simpo"] = opt(
        "lora", "lora | full | qlora (qlora needs CUDA and bitsandbytes) | dpo | simpo (preference tuning, docs/preference.md)")
    weights: Literal["lora", "full", "qlora"] = opt("lora", "which weights dpo / simpo train: lora | full | qlora")
    beta: float | None = opt(None, "dpo / simpo: how far from the reference the preference may pull; "
                                   "default 0.1 (dpo), 2.0 (simpo)")
    loss: Literal["sigmoid", "ipo"] = opt("sigmoid", "dpo's loss: sigmoid (DPO) | ipo")
    sft_weight: float = opt(0.0, "dpo / simpo: weight of an SFT term on the chosen answer (RPO; TRL's rpo_alpha)")
    gamma: float = opt(0.5, "simpo: the target reward margin")
    r: int | Auto = opt("auto", "LoRA rank; auto = from the trained tokens (docs/auto.md)")
    alpha: int | Auto = opt("auto", "LoRA alpha (scale = alpha / r); auto = 2 x r")
    dropout: float = opt(0.05, "LoRA dropout (off for dpo / simpo: the policy must score as the reference did)")
    target_modules: str = opt("all-linear", "LoRA target modules: 'all-linear' or a comma-separated list")
    use_rslora: bool = opt(False, "rank-stabilised LoRA (scale = alpha / sqrt(r))")
    use_dora: bool = opt(False, "weight-decomposed LoRA (DoRA)")

    @property
    def trains(self) -> str:
        """Which weights train: lora | full | qlora (the method itself, or `weights` for dpo / simpo)."""
        return self.weights if self.name in ("dpo", "simpo") else self.name

    @property
    def preference(self) -> bool:
        """Is this preference tuning (pairs of chosen / rejected answers) rather than SFT?"""
        return self.name in ("dpo", "simpo")


@dataclass(frozen=True)
class TrainConfig:
    epochs: float | Auto = opt("auto", "passes over the training data; auto = from the number of examples (docs/auto.md)")
    max_steps: int | None = opt(None, "optimizer steps; when set, overrides epochs")
    time_budget: str | None = opt(
        None, "stop on time: '90s', '10m', '1h30m'; the steps are planned from the measured step time, the best "
        "checkpoint is the deliverable")
    lr: float | Auto = opt("auto", "peak learning rate; auto = from the method and the model size")
    batch_size: int | Auto = opt(
        "auto", "examples per optimizer step (per process, before accumulation); auto = from the number of examples "
        "and their length")
    grad_accum: int = opt(1, "gradient accumulation steps")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 disables")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_ratio: float = opt(0.05, "fraction of steps spent warming up the learning rate")
    schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "learning-rate schedule after warmup")
    eval_every: int | Auto = opt("auto", "validate every N optimizer steps; auto = at least 8 times a run and twice an epoch")
    save_every: int | Auto = opt("auto", "checkpoint every N optimizer steps; auto = at every validation (adapters) or "
                                 "every second one (full)")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    early_stopping_patience: int = opt(3, "stop after N validations without improvement; 0 disables")
    seed: int = opt(42, "seed for data order, initialisation and dropout")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = opt(
        "auto", "auto = bf16 on a GPU that supports it, otherwise full precision")
    packing: bool = opt(True, "pack several examples per row (attention kept inside each example)")
    packed_attention: Literal["auto", "dense", "flex"] = opt(
        "auto", "how packed rows keep examples apart: dense = a 4D mask through the model's attention; flex = "
        "torch's flex_attention with a block mask, one unpadded row a pass (CUDA only); auto = flex on a CUDA GPU "
        "where it can train the model, else dense")
    group_by_length: bool | None = opt(
        None, "steps of similar-length examples; null = on without packing, off with it (mixed lengths pack tighter)")
    threads: int | None = opt(None, "CPU threads for torch; null = all cores")
    gradient_checkpointing: bool | Auto = opt(
        "auto", "recompute each layer's activations in the backward pass: less memory, more time (bench/RESULTS.md); "
        "auto = on when the estimated peak memory passes 85% of what the device has free (docs/auto.md)")
    fused_kernels: bool | None = opt(
        None, "Liger kernels (RMSNorm, SwiGLU) on a CUDA GPU; null = when liger-kernel is installed")
    log_to: list[Literal["tensorboard", "wandb", "mlflow"]] = opt(
        [], "trackers that get the metrics besides metrics.jsonl, several at once: tensorboard,wandb; none = []")
    sample_answers: int = opt(3, "validation prompts answered greedily at every validation (metrics.jsonl, terminal, "
                              "report.html); 0 = off")
    sample_max_tokens: int = opt(48, "longest sample answer, in tokens")


@dataclass(frozen=True)
class EvalConfig:
    strategies: list[str] = opt(["base", "prompt", "rag", "tuned", "tuned+rag"], "strategies to compare")
    max_new_tokens: int = opt(128, "longest generated answer, in tokens")
    batch_size: int = opt(16, "answers generated together (the engine's batch: one forward pass a token for all)")
    few_shot: int = opt(3, "few-shot examples in the prompt strategy")
    rag_k: int = opt(3, "retrieved examples or chunks in the rag strategies")
    docs: str | None = opt(None, "folder of .txt/.md documents to retrieve from (default: training examples)")
    probe: Literal["fast", "full", "none"] = opt("fast", "forgetting probe on general knowledge")
    forgetting_threshold: float = opt(2.0, "warn when a probe task drops by more than this many points")
    limit: int | None = opt(None, "evaluate only the first N examples")


@dataclass(frozen=True)
class ServeConfig:
    host: str = opt("127.0.0.1", "address to bind; anything but loopback needs an API key to be safe")
    port: int = opt(8000, "port to listen on")
    api_key: str | None = opt(None, "when set, requests need 'Authorization: Bearer KEY'", secret=True)
    max_tokens_limit: int = opt(2048, "largest max_tokens a request may ask for")
    max_body_bytes: int = opt(1_000_000, "largest request body accepted")
    max_prompt_chars: int = opt(200_000, "largest prompt, in characters, checked before tokenizing")
    engine: Literal["auto", "torch", "llamacpp"] = opt(
        "auto", "auto (llama.cpp for a GGUF file or export, torch otherwise) | torch | llamacpp")
    max_batch: int = opt(16, "requests decoded together in one forward pass (continuous batching); on llama.cpp "
                             "at most 4, each with a KV cache of the whole context, allocated at start")
    max_queue: int = opt(64, "requests waiting for the engine; past it a request gets 503 with Retry-After")
    allowed_hosts: list[str] = opt(
        ["localhost", "127.0.0.1", "::1"],
        "Host header names accepted on a loopback bind (stops DNS rebinding from a web page); '*' allows any")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = opt(ModelConfig(), "the base model")
    data: DataConfig = opt(DataConfig(), "training and evaluation data")
    method: MethodConfig = opt(MethodConfig(), "fine-tuning method")
    train: TrainConfig = opt(TrainConfig(), "training loop")
    eval: EvalConfig = opt(EvalConfig(), "evaluation")
    serve: ServeConfig = opt(ServeConfig(), "serving")
    output_dir: str = opt("runs", "folder that holds the run folders (in a config file: relative to that file)")


SECTIONS = ("model", "data", "method", "train", "eval", "serve")
# List keys that still take `none` (or null) for the empty list: train.log_to was `none | tensorboard`.
NONE_IS_EMPTY = ("train.log_to",)
# Keys that hold a file or folder path (model.name only when it looks like one, see _is_path).
PATH_KEYS = ("model.name", "data.train", "data.validation", "data.test", "eval.docs", "output_dir")


@dataclass
class Resolved:
    """A config with, for every non-default key, where its value came from."""

    config: Config
    sources: dict[str, str]


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, type, help) for every config key, in declaration order."""
    rows = []
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(f.type) or f.name in SECTIONS:
            section_cls = _section_class(f.name)
            for sf in dataclasses.fields(section_cls):
                rows.append((f"{f.name}.{sf.name}", _type_name(_hints(section_cls)[sf.name]), sf.metadata["help"]))
        else:
            rows.append((f.name, _type_name(_hints(Config)[f.name]), f.metadata["help"]))
    return rows


def keys_help() -> str:
    """Every key with its help, one per line, for CLI epilogs."""
    return "\n".join(f"{k} ({t}): {h}" for k, t, h in describe_keys())


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults < YAML at `path` < `overrides` ('train.lr=1e-4'). Raises ConfigError with every problem."""
    return resolve_config(path, overrides).config


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The config.yaml saved in a run folder. Its paths are absolute; a run saved before paths were
    resolved has relative ones, which meant the current folder, so they still do here."""
    return resolve_config(path, overrides, file_folder=Path.cwd()).config


def resolve_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                   file_folder: Path | None = None) -> Resolved:
    """As load_config, with the source of every key; relative paths in the file are relative to
    `file_folder` (default: the file's own folder)."""
    raw, lines = ({}, {}) if path is None else _read_yaml(Path(path))
    sources = {key: f"{path}:{line}" for key, line in lines.items()}
    problems: list[str] = []
    for item in overrides:
        key, value = _parse_override(item, problems)
        if key is not None:
            _set_dotted(raw, key, value)
            sources[key] = f"--set {item}"

    def where(key: str) -> str:
        found = sources.get(key) or next((v for k, v in sources.items() if k.startswith(key + ".")), None)
        return f"{found}: " if found else ""

    config = _build(raw, problems, where)
    if problems:
        head = f"{len(problems)} config error(s)" + (f" in {path}" if path else "")
        raise ConfigError(head + ":\n  " + "\n  ".join(problems), problems=problems)
    in_file = {key for key, src in sources.items() if not src.startswith("--set ")}
    folder = file_folder or (Path(os.path.abspath(path)).parent if path is not None else None)
    config = absolute_paths(config, lambda key: folder if key in in_file else Path.cwd())
    return Resolved(config, {k: v for k, v in sources.items() if _is_leaf_key(k)})


def absolute_paths(config: Config, base_of=None) -> Config:
    """`config` with every relative path in PATH_KEYS made absolute (`~` expanded).

    `base_of(key)` is the folder a key's relative path is relative to; by default the current
    folder (for a Config built in Python, before it is saved with a run).
    """
    changes: dict[str, Any] = {}  # replace() arguments: {section: {leaf: value}} or {top-level key: value}
    for key in PATH_KEYS:
        section, _, leaf = key.rpartition(".")
        value = getattr(getattr(config, section), leaf) if section else getattr(config, leaf)
        base = base_of(key) if base_of else Path.cwd()
        if not isinstance(value, str) or not value or (key == "model.name" and not _is_path(value, base)):
            continue
        absolute = os.path.normpath(base / Path(value).expanduser())  # an absolute value stays as it is
        if section:
            changes.setdefault(section, {})[leaf] = absolute
        else:
            changes[leaf] = absolute
    return replace(config, **changes)


def _is_path(name: str, base: Path) -> bool:
    """Is a model.name a path? A store name ('smollm2-135m-instruct') or a hub id ('org/model')
    is not, unless that folder exists; './x', '../x', '~/x', '/x' and 'x.gguf' are."""
    if name.startswith(("./", "../", "~", "/", ".\\", "..\\")) or name.lower().endswith(".gguf"):
        return True
    return ("/" in name or "\\" in name) and (base / name).exists()


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    """The config as YAML, as saved beside every run; secret keys (serve.api_key) are written as null.

    A run folder gets copied, shared and attached to bug reports: a key saved in it is a key given
    away. Loading the YAML back gives the same config with the secrets unset (resume and
    `runs compare` never read them), and a comment line says which were left out.
    """
    data = to_dict(config)
    left_out = []
    for section, key in secret_keys():
        if data[section][key] is not None:
            data[section][key] = None
            left_out.append(f"{section}.{key}")
    head = f"# not saved here (secret): {', '.join(left_out)}\n" if left_out else ""
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def secret_keys() -> list[tuple[str, str]]:
    """(section, key) of every key declared with secret=True."""
    return [(name, f.name) for name in SECTIONS for f in dataclasses.fields(_section_class(name))
            if f.metadata.get("secret")]


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of `config` with some keys changed: replace(cfg, train={"lr": 1e-3}, output_dir="x")."""
    changes: dict[str, Any] = {}
    for name, value in sections.items():
        if name in SECTIONS:
            changes[name] = dataclasses.replace(getattr(config, name), **value)
        else:
            changes[name] = value
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------- internals


def _section_class(name: str) -> type:
    return _hints(Config)[name]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _is_leaf_key(key: str) -> bool:
    return key.count(".") == 1 or key in ("output_dir",)


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}", "check the path, or run `tunesmith config show` for defaults")
    if path.is_dir():
        raise ConfigError(f"config path is a folder, not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; a config is a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of keys (model, data, method, train, ...)")
    return raw, _key_lines(node)


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line where it is set in the YAML file."""
    lines: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        if isinstance(value_node, yaml.MappingNode):
            lines.update(_key_lines(value_node, key + "."))
        else:
            lines[key] = key_node.start_mark.line + 1
    # `model: NAME` is shorthand for model.name
    if "model" in lines and not prefix:
        lines["model.name"] = lines.pop("model")
    return lines


def _parse_override(item: str, problems: list[str]) -> tuple[str | None, Any]:
    if "=" not in item:
        problems.append(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
        return None, None
    key, text = item.split("=", 1)
    key = key.strip()
    if key == "model":
        key = "model.name"
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if part == "model" and isinstance(node.get("model"), str):
            node["model"] = {"name": node["model"]}
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _build(raw: dict, problems: list[str], where) -> Config:
    if isinstance(raw.get("model"), str):
        raw = {**raw, "model": {"name": raw["model"]}}
    top_hints = _hints(Config)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in top_hints:
            problems.append(_unknown(str(key), list(top_hints), where(str(key))))
        elif key in SECTIONS:
            kwargs[key] = _build_section(key, value, problems, where)
        else:
            kwargs[key] = _coerce(key, value, top_hints[key], problems, where(key))
    try:
        return Config(**{k: v for k, v in kwargs.items() if v is not _BAD})
    except TypeError as e:  # pragma: no cover - guarded by the checks above
        problems.append(str(e))
        return Config()


def _build_section(name: str, value: Any, problems: list[str], where) -> Any:
    cls = _section_class(name)
    if value is None:
        return cls()
    if not isinstance(value, dict):
        problems.append(f"{where(name)}{name}: expected a mapping of keys, got {type(value).__name__}")
        return _BAD
    hints = _hints(cls)
    kwargs = {}
    for key, v in value.items():
        dotted = f"{name}.{key}"
        if key not in hints:
            problems.append(_unknown(dotted, [f"{name}.{k}" for k in hints] + _all_dotted(), where(dotted)))
            continue
        coerced = _coerce(dotted, v, hints[key], problems, where(dotted))
        if coerced is not _BAD:
            kwargs[key] = coerced
    return cls(**kwargs)


def _all_dotted() -> list[str]:
    return [k for k, _, _ in describe_keys()]


def _unknown(key: str, valid: list[str], where: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    # A key put under the wrong section ('data.lr') is matched on its last part first.
    close = [k for k in _all_dotted() if k.rsplit(".", 1)[-1] == leaf and k != key][:1]
    close = close or difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else "see `tunesmith config keys`"
    return f"{where}unknown key '{key}': {hint}"


class _Bad:
    pass


_BAD = _Bad()


def _coerce(key: str, value: Any, tp: Any, problems: list[str], where: str) -> Any:
    if key in NONE_IS_EMPTY and value in (None, "none"):
        return []
    ok, out = _try_type(value, tp)
    if ok:
        return out
    hint = ""
    if isinstance(value, str) and value.strip().lower() == "auto":
        hint = (f"; write it in lowercase: auto" if key in auto_keys()
                else f"; 'auto' is accepted only for {', '.join(auto_keys())}")
    problems.append(f"{where}{key}: {_mismatch(value, tp)}{hint}")
    return _BAD


def auto_keys() -> list[str]:
    """The dotted keys that accept 'auto'."""
    return [key for key, tp, _ in describe_keys() if "auto" in tp.split(" | ") and key not in _AUTO_LITERAL_KEYS]


# keys whose Literal choices include "auto" as a mode of their own (not a value chosen from the data)
_AUTO_LITERAL_KEYS = ("model.dtype", "model.device", "train.mixed_precision", "train.packed_attention", "serve.engine")


def _mismatch(value: Any, tp: Any) -> str:
    """What is wrong with `value` for type `tp`; for a list of choices, the items that are none of them."""
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
    if typing.get_origin(item) is Literal and isinstance(value, (str, list)):
        choices = [str(c) for c in typing.get_args(item)]
        items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        unknown = [v for v in items if v not in choices]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), choices, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"unknown {', '.join(map(repr, unknown))}{hint}: choose from {', '.join(choices)}"
    return f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"


def _try_type(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _try_type(value, arg)
            if ok:
                return True, out
        return False, None
    if origin is Literal:
        return (value in typing.get_args(tp)), value
    if origin is list:
        if isinstance(value, str):  # --set eval.strategies=base,tuned
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            items = [_try_type(v, typing.get_args(tp)[0]) for v in value]
            if all(ok for ok, _ in items):
                return True, [v for _, v in items]
        return False, None
    if tp is type(None):
        return value is None, None
    if tp is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return True, value.lower() in ("true", "yes")
        return False, None
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        if isinstance(value, str):
            try:
                return True, int(value)
            except ValueError:
                return False, None
        return False, None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `2e-4` as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if tp is str:
        if isinstance(value, str):
            return True, value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, None
    return isinstance(value, tp), value
