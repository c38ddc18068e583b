"""`data pairs`: preference pairs from SFT data; the data's answer is chosen, another answer rejected.

The rejected answer is a model's sampled answer to the same prompt (`rejected="sample"`: teaches the
data's answers over what the model says now), or the data's own answer to the most similar other
prompt (`rejected="similar"`: a plausible, on-topic answer to another question, which teaches the
model to prefer the answer that fits the question; no model runs).

The output is TRL's standard form, one pair a line, `{"prompt", "chosen", "rejected", "source_line"}`
(the prompt as text when it is one user turn, else its messages), which the `preference` format
reads back, so a person can read and edit it. It is written as it goes, whole lines appended and
flushed, beside a record of what made it (OUT + RECORD_SUFFIX: the input's sha256, the settings,
the examples skipped and why). A rerun with the same input and settings continues where an
interrupted run stopped; any other file at OUT is never replaced.

Why a rerun writes what one uninterrupted run would: answers are sampled in fixed batches of
BATCH examples, every request with its own seed (from `seed`, the example's line and the attempt),
and a batch that was cut off is sampled again whole, writing only its missing rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.data.formats import PREFERENCE_FORMATS, parse_mapping, read_examples
from tunesmith.data.rules import is_error
from tunesmith.errors import ConfigError, DataError, ModelError
from tunesmith.io import atomic_write_json, json_text, read_json_object, sha256_file

BATCH = 8  # examples sampled together: part of the settings, since a batch's padding moves logits by float rounding
RETRIES = 3  # resamples, each with the next seed, of an answer that is empty or the same as the chosen one
RECORD_SUFFIX = ".tunesmith.json"
CREATED_BY = "tunesmith data pairs"
CHECK_HINT = "run `tunesmith data check {path}` to see every problem"


@dataclass(frozen=True)
class PairOptions:
    """Which model samples the rejected answers and how, and how the input is read."""

    model: str | None = None  # a model (store name, folder, GGUF file); None: the embedded default model
    run: str | None = None  # or a run's deliverable (name or folder) instead of `model`
    seed: int = 0
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    limit: int | None = None  # the first N examples only (a later run with a higher limit goes on from there;
    # the last batch is sampled whole all the same, up to BATCH - 1 answers more than the limit asks for)
    format: str | None = None
    mapping: Any = None
    system: str | None = None
    device: str = "auto"
    rejected: str = "sample"  # sample: a model's sampled answer | similar: the answer of the most similar other prompt


REJECTED = ("sample", "similar")
ALIKE = 0.5  # a similar prompt's answer sharing this share of its words (Jaccard) with the chosen one is no rejected answer


@dataclass
class PairSummary:
    """What a `build_pairs` call left in `out`: pairs written in all, how many were there before, what was skipped."""

    out: Path
    examples: int  # examples of the input considered (after `limit`)
    written: int  # pairs in `out`
    resumed: int  # of them already there when the call began
    skipped: dict[str, int] = field(default_factory=dict)  # why -> examples: same, empty, long (see SKIPPED)
    model: str = ""


SKIPPED = {"same": f"the sampled answer was the chosen one {RETRIES + 1} times",
           "empty": f"the sampled answer was empty {RETRIES + 1} times",
           "long": "the prompt and max_new_tokens do not fit the model's context",
           "alike": f"every other example's answer shares {ALIKE:.0%} of its words or more with this one's"}


@dataclass(frozen=True)
class _Source:
    """One input example: its line, the prompt (messages up to the last assistant turn), that turn's text."""

    line: int
    prompt: list[dict]
    chosen: str


def build_pairs(source: str | Path, out: str | Path, options: PairOptions = PairOptions(), *,
                progress: Callable[[int, int], None] | None = None) -> PairSummary:
    """Write (or continue) `out` with a pair per example of `source`; `progress(done, total)` after each batch.

    Raises DataError for an input with errors, or an `out` this command did not write for this
    input with these settings; RunError / ModelError when the model cannot be found or loaded.
    """
    source, out = Path(source), Path(out)
    check_options(options)
    # 1. the input: every example's prompt and chosen answer, or one line naming its first error
    examples = read_sources(source, options)
    wanted = {ex.line for ex in examples[:options.limit]}
    # 2. the output: new, or ours to continue; anything else is refused before the model loads
    record = claim(out, source, _settings(options))
    done = complete_rows(out)
    record["skipped"] = {k: v for k, v in record["skipped"].items() if int(k) not in done}
    resumed = len(done)

    def is_open(ex: _Source) -> bool:  # wanted, and neither written nor skipped yet
        return ex.line in wanted and ex.line not in done and str(ex.line) not in record["skipped"]

    def report() -> None:
        if progress:
            progress(len(wanted) - sum(map(is_open, examples)), len(wanted))

    # batches are cut from the whole input, so --limit never changes what a batch holds (see the module's docstring)
    todo = [batch for batch in _batches(examples) if any(map(is_open, batch))]
    report()
    # 3. the model, when there is work for it; 4. batch by batch: append its pairs, then record its skips
    if todo:
        answer = _rejecter(options, examples)
        with open(out, "ab") as f:
            for batch in todo:
                answers = answer(batch)
                _append(f, _new_rows([ex for ex in batch if is_open(ex)], answers, done, record))
                atomic_write_json(record_path(out), record)
                report()
    # 5. what the file holds now
    skipped: dict[str, int] = {}
    for why in record["skipped"].values():
        skipped[why] = skipped.get(why, 0) + 1
    return PairSummary(out, len(wanted), len(done), resumed, dict(sorted(skipped.items())), _source_name(options))


def _rejecter(options: PairOptions, examples: list[_Source]) -> Callable[[list[_Source]], dict]:
    """batch -> {line: (rejected answer, why it is none or None)}: sampled by the model, or the similar prompt's."""
    if options.rejected == "similar":
        answers = similar_answers(examples)  # over the whole input, so --limit never changes a pair
        return lambda batch: {ex.line: answers[ex.line] for ex in batch}
    engine, tokenizer = _engine(options)
    return lambda batch: sample(engine, tokenizer, batch, options)


def similar_answers(examples: list[_Source]) -> dict[int, tuple[str, str | None]]:
    """line -> (the answer of the most similar other prompt whose answer is not alike, why none or None).

    Prompts are compared by the bundled MiniLM embedding of their user turns (a system prompt
    they all share would make them all alike); answers sharing ALIKE of their words or more
    (near-duplicate questions) are passed over, so no pair asks for a preference between two
    versions of the same answer.
    """
    import numpy as np

    from tunesmith.rag.embeddings import Embedder

    texts = ["\n".join(m["content"] for m in ex.prompt if m["role"] != "system") for ex in examples]
    vectors = Embedder().encode(texts)
    sim = vectors @ vectors.T  # (N, N) cosine
    np.fill_diagonal(sim, -np.inf)
    words = [set(ex.chosen.lower().split()) for ex in examples]
    out: dict[int, tuple[str, str | None]] = {}
    for i, ex in enumerate(examples):
        out[ex.line] = ("", "alike")
        for j in np.argsort(-sim[i], kind="stable")[:-1]:  # the last is the example itself (-inf)
            if len(words[i] & words[j]) < ALIKE * len(words[i] | words[j]):
                out[ex.line] = (examples[j].chosen, None)
                break
    return out


def _source_name(options: PairOptions) -> str:
    """Where the rejected answers come from, for the summary line."""
    if options.rejected == "similar":
        return "the most similar other prompt's answer"
    return options.run or options.model or _default_model()


def check_options(options: PairOptions) -> None:
    """ConfigError for options out of range, before any work."""
    if options.run and options.model:
        raise ConfigError("give --model or --run, not both", "--run samples with a trained run, --model with a model")
    if options.rejected not in REJECTED:
        raise ConfigError(f"--rejected {options.rejected!r}: expected one of {', '.join(REJECTED)}")
    if options.rejected == "similar" and (options.run or options.model):
        raise ConfigError("--rejected similar takes the rejected answers from the data: no model samples them",
                          "drop --model / --run, or use --rejected sample")
    if options.max_new_tokens < 1 or options.temperature < 0 or not 0 < options.top_p <= 1:
        raise ConfigError("--max-new-tokens must be >= 1, --temperature >= 0 and --top-p in (0, 1]")
    if options.limit is not None and options.limit < 1:
        raise ConfigError(f"--limit {options.limit}: expected a number of examples >= 1")


def read_sources(path: Path, options: PairOptions) -> list[_Source]:
    """The input's examples as (line, prompt, chosen); DataError naming the first error (file:line: message)."""
    if not path.is_file():
        raise DataError(f"no such file: {path}", "check the path")
    result = read_examples(path, format=options.format, mapping=options.mapping, system=options.system)
    if result.format in PREFERENCE_FORMATS:
        raise DataError(f"{path} holds preference pairs already (format {result.format})",
                        "data pairs builds pairs from input/output examples")
    errors = [f for f in result.findings if is_error(f)]
    if errors:
        first = errors[0]
        where = f"{path}:{first.line}" if first.line else str(path)
        field_name = f" ({first.field})" if first.field else ""
        raise DataError(f"{where}{field_name}: {first.message} ({len(errors)} error(s) in the file)",
                        CHECK_HINT.format(path=path))
    if any("messages" not in ex for ex in result.examples):
        raise DataError(f"{path}: text rows have no prompt to answer", "data pairs needs input/output examples")
    out = []
    for ex in result.examples:
        messages = ex["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
        out.append(_Source(ex["line"], prompt, messages[last]["content"]))
    if not out:
        raise DataError(f"{path}: no usable examples", CHECK_HINT.format(path=path))
    return out


def sample(engine, tokenizer, batch: list[_Source], options: PairOptions) -> dict[int, tuple[str, str | None]]:
    """line -> (sampled answer, why it is no rejected answer or None), resampling empty and same answers.

    Attempt k of an example samples with `seed_for(seed, line, k)`; the examples of one attempt
    are decoded together.
    """
    from tunesmith.data.render import render_prompt
    from tunesmith.models.engine import Sampling

    answers: dict[int, tuple[str, str | None]] = {}
    prompts = {ex.line: render_prompt(ex.prompt, tokenizer) for ex in batch}
    todo = []
    for ex in batch:
        if len(prompts[ex.line]) + options.max_new_tokens > engine.context_length:
            answers[ex.line] = ("", "long")
        else:
            todo.append(ex)
    for attempt in range(RETRIES + 1):
        if not todo:
            break
        samplings = [Sampling(options.max_new_tokens, options.temperature, options.top_p,
                              seed_for(options.seed, ex.line, attempt)) for ex in todo]
        events = engine.generate([prompts[ex.line] for ex in todo], samplings)
        for ex, event in zip(todo, events):
            if event.error:
                raise ModelError(f"generating an answer to line {ex.line} failed: {event.error}")
            text = event.text.strip()
            answers[ex.line] = (text, "empty" if not text else "same" if text.split() == ex.chosen.split() else None)
        todo = [ex for ex in todo if answers[ex.line][1]]
    return answers


def seed_for(seed: int, line: int, attempt: int) -> int:
    """The sampling seed of one attempt at one example: distinct for every (seed, line, attempt)."""
    return (seed * 1_000_003 + line) * (RETRIES + 1) + attempt


def pair_row(example: _Source, rejected: str) -> dict:
    """The TRL row written for an example: the prompt as text when it is one user turn."""
    prompt: Any = example.prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        prompt = prompt[0]["content"]
    return {"prompt": prompt, "chosen": example.chosen, "rejected": rejected, "source_line": example.line}


# ------------------------------------------------------------------ the output file and its record


def record_path(out: Path) -> Path:
    return out.with_name(out.name + RECORD_SUFFIX)


def claim(out: Path, source: Path, settings: dict) -> dict:
    """The record of `out` to continue, or a new one; DataError when `out` is not this command's for this input.

    `out` may be missing or empty (a new record is written), or an earlier output of `data pairs`
    made from the same input (its sha256) with the same settings. Anything else is refused.
    """
    if out.exists() and (out.is_dir() or out.resolve() == source.resolve()):
        raise DataError(f"--out {out} is {'a folder' if out.is_dir() else 'the input file'}", "give a new file for the pairs")
    sha = sha256_file(source)
    record = read_json_object(record_path(out))
    ours = record.get("created_by") == CREATED_BY
    if record_path(out).exists() and not ours:
        raise DataError(f"{record_path(out)} exists and was not written by `tunesmith data pairs`: it is never replaced",
                        "choose another --out")
    if out.exists() and out.stat().st_size:
        if not ours:
            raise DataError(f"--out {out} exists and was not written by `tunesmith data pairs`: it is never replaced",
                            "choose another --out, or remove the file yourself")
        if record.get("source_sha256") != sha:
            raise DataError(f"--out {out} holds pairs made from another input ({record.get('source')}, or it changed "
                            "since): it is never replaced", "choose another --out")
        before = {"rejected": "sample", **record.get("settings", {})}  # records older than --rejected sampled
        changed = [f"{k} {before.get(k)!r}, now {v!r}" for k, v in settings.items() if before.get(k) != v]
        if changed:
            raise DataError(f"--out {out} was made with other settings ({'; '.join(changed)})",
                            "rerun with those settings to continue it, or choose another --out")
        return {**record, "skipped": record.get("skipped") if isinstance(record.get("skipped"), dict) else {}}
    record = {"created_by": CREATED_BY, "source": str(source), "source_sha256": sha, "settings": settings, "skipped": {}}
    atomic_write_json(record_path(out), record)
    return record


def complete_rows(out: Path) -> set[int]:
    """The source lines of the pairs in `out`; a last line cut off mid-write (no newline) is removed from the file."""
    if not out.is_file():
        return set()
    data = out.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # an interrupted write: the line is sampled again
        with open(out, "rb+") as f:
            f.truncate(end)
    lines: set[int] = set()
    for n, raw in enumerate(data[:end].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            lines.add(int(json.loads(raw)["source_line"]))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{out}:{n}: not a pair `data pairs` wrote (a JSON object with its source_line)",
                            "restore the line, or choose another --out") from None
    return lines


def _append(f, rows: list[dict]) -> None:
    """Whole lines, one write, flushed to disk: an interruption leaves at most the last line cut off."""
    if rows:
        f.write("".join(json_text(r) + "\n" for r in rows).encode("utf-8", "backslashreplace"))
        f.flush()
        os.fsync(f.fileno())


def _new_rows(examples: list[_Source], answers: dict[int, tuple[str, str | None]], done: set[int],
              record: dict) -> list[dict]:
    """The pairs of `examples` (those `out` lacks), in order; adds their lines to `done` and the skipped to the record."""
    rows = []
    for ex in examples:
        text, why = answers[ex.line]
        if why:
            record["skipped"][str(ex.line)] = why
        else:
            rows.append(pair_row(ex, text))
            done.add(ex.line)
    return rows


def _batches(examples: list[_Source]) -> list[list[_Source]]:
    return [examples[i:i + BATCH] for i in range(0, len(examples), BATCH)]


def _settings(options: PairOptions) -> dict:
    """What makes the file what it is: a rerun continues only with the same (`limit` may grow)."""
    settings = {k: v for k, v in asdict(options).items() if k not in ("limit", "device", "mapping")}
    settings["mapping"] = dict(sorted(parse_mapping(options.mapping).items()))
    settings["model"] = None if options.run or options.rejected == "similar" else options.model or _default_model()
    return {**settings, "batch": BATCH, "retries": RETRIES}


def _default_model() -> str:
    from tunesmith.models.store import BUILTIN_NAME

    return BUILTIN_NAME


def _engine(options: PairOptions):
    """(Engine, tokenizer) of the run or model that samples the rejected answers."""
    from tunesmith.models.engine import Engine
    from tunesmith.runs.deliverable import resolve

    deliverable = resolve(options.run, allow_models=False) if options.run else resolve(options.model or _default_model())
    model, tokenizer = deliverable.load(device=options.device)
    return Engine(model, tokenizer, max_batch=BATCH), tokenizer
