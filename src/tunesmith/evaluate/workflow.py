"""The evaluation workflow: strategies side by side on held-out examples, a forgetting probe, the report.

`compare()` reads top to bottom in numbered phases; the parts it calls (renderer, batched
generation, metrics, retrieval, bootstrap, probe, report) live in their own modules.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tunesmith.config import Config, load_config, load_run_config
from tunesmith.errors import EvalError
from tunesmith.evaluate import metrics as M
from tunesmith.evaluate import strategies as S

TEST_HINT = "`tunesmith data check {path}` shows every problem in the file"


@dataclass
class Plan:
    """Everything `compare` decided before touching a model."""

    cfg: Config
    data: Path
    out: Path
    strategies: list[str]
    run: Any = None  # RunInfo
    train: Path | None = None
    docs: str | None = None
    system: str | None = None
    limit: int | None = None
    probe: str = "none"
    allow_overlap: bool = False
    user_metrics: list[M.UserMetric] = field(default_factory=list)
    seed: int = 0
    quiet: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    """What `compare` returns: the numbers (as in report.json) and where the report files are."""

    report: dict
    html: Path
    json: Path


def compare(
    data: str | Path | None = None, *, run: Any = None, out: str | Path | None = None, config: Config | str | Path | None = None,
    strategies: str | Sequence[str] | None = None, limit: int | None = None, docs: str | None = None,
    system: str | None = None, train: str | Path | None = None, model: str | None = None, allow_overlap: bool = False,
    probe: str | None = None, metrics: Sequence[str] = (), regex: str | None = None, json_schema: str | None = None,
    max_new_tokens: int | None = None, batch_size: int | None = None, seed: int = 0, quiet: bool = False,
    device: str | None = None,
) -> EvalResult:
    """Compare strategies (base, prompt, rag, tuned, tuned+rag) on the examples in `data`; write the report.

    With `run`, `data` defaults to the run's test split, few-shot and rag examples come from its
    training split and the report goes into the run folder; without one, `out` is required and
    the tuned strategies are left out. Settings not given come from `config` (the run's own config
    when there is a run) and its `eval` section.
    """
    # 1. decide: config, run, data, strategies, metrics, where the report goes
    plan = _plan(data, run=run, out=out, config=config, strategies=strategies, limit=limit, docs=docs, system=system,
                 train=train, model=model, allow_overlap=allow_overlap, probe=probe, user_metrics=metrics, regex=regex,
                 json_schema=json_schema, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, quiet=quiet,
                 device=device)
    # 2. the held-out cases, and the training cases the prompt and rag strategies draw on
    test_examples = _read(plan.data, plan, "test data")
    cases = _cases(test_examples, plan)
    train_examples = _train_examples(plan)
    # 3. refuse test examples that are also in the training data (exact or same input; allow_overlap goes on);
    #    report those whose input has a near copy there, and score without them too (step 8)
    overlap, matched = _overlap(test_examples, train_examples, plan)
    # 4. what the prompt and rag strategies add to each prompt
    ctx = _context(cases, train_examples, plan)
    # 5. the models, each loaded once
    models = _load_models(plan)
    # 6. every strategy on every case: answers, text metrics, loss on the reference answers
    started = time.time()
    with _progress(plan.quiet) as track:
        results = {name: _run_strategy(name, cases, ctx, models, plan, track) for name in plan.strategies}
        # 7. the forgetting probe on base and tuned
        forgetting = _forgetting(models, plan, track)
    # 8. paired bootstrap intervals against base, then the report
    from tunesmith.evaluate import report as R  # noqa: N812

    intervals = _intervals(results, plan)
    clean = _clean(cases, results, matched, plan)
    summary = _report(plan, cases, results, intervals, forgetting, overlap, clean, models, time.time() - started)
    html, json_path = R.write_report(summary, plan.out, metrics_rows=_training_metrics(plan))
    return EvalResult(summary, html, json_path)


def evaluate_run(run: Any, data: str | Path | None = None, **kwargs: Any) -> EvalResult:
    """`tunesmith eval RUN`: compare on the run's test split (or `data`), probe forgetting, report into the run."""
    return compare(data, run=run, **kwargs)


def compare_for_quickstart(run: Any, *, limit: int = 20, max_new_tokens: int = 64, probe: str = "fast",
                           quiet: bool = False) -> Path:
    """The quickstart's last step: every strategy on the first `limit` test examples; returns report.html."""
    return evaluate_run(run, limit=limit, max_new_tokens=max_new_tokens, probe=probe, quiet=quiet).html


# ------------------------------------------------------------------ 1. plan


def _plan(data, *, run, out, config, strategies, limit, docs, system, train, model, allow_overlap, probe, user_metrics,
          regex, json_schema, max_new_tokens, batch_size, seed, quiet, device=None) -> Plan:
    info = _find_run(run) if run is not None else None
    cfg = _config(config, info)
    overrides: dict[str, Any] = {"eval": {}}
    if model or device:
        overrides["model"] = {k: v for k, v in (("name", model), ("device", device)) if v}
    for key, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size), ("docs", docs),
                       ("limit", limit)):
        if value is not None:
            overrides["eval"][key] = value
    from tunesmith.config import replace

    cfg = replace(cfg, **overrides)
    if device:  # a wrong --device is one line before any work, not after the data checks
        from tunesmith.models.load import resolve_device

        resolve_device(device)
    notes: list[str] = []
    names = _strategies(strategies, cfg, info, notes)
    plan = Plan(cfg=cfg, data=_data_path(data, info), out=_out_dir(out, info), strategies=names, run=info,
                train=_train_path(train, info, cfg), docs=cfg.eval.docs, system=system or cfg.data.system,
                limit=cfg.eval.limit, probe=_probe_mode(probe, cfg, info, notes), allow_overlap=allow_overlap,
                user_metrics=_user_metrics(user_metrics, regex, json_schema), seed=seed, quiet=quiet, notes=notes)
    _check_numbers(plan)
    return plan


def _find_run(run):
    from tunesmith.runs.store import find_run

    return find_run(run)


def _config(config, info) -> Config:
    if isinstance(config, Config):
        return config
    if config is not None:
        return load_config(config)
    if info is not None and (info.dir / "config.yaml").is_file():
        return load_run_config(info.dir / "config.yaml")
    return load_config(None)


def _strategies(asked, cfg: Config, info, notes: list[str]) -> list[str]:
    names = S.parse_strategies(asked if asked is not None else cfg.eval.strategies)
    tuned = [n for n in names if S.uses_tuned(n)]
    if info is None and tuned:
        if asked is not None:
            raise EvalError(f"strategies {', '.join(tuned)} need a fine-tuned run", "add --run RUN, or leave them out")
        names = [n for n in names if not S.uses_tuned(n)]
        notes.append("no run given: tuned strategies left out")
    if not names:
        raise EvalError("no strategies left to compare", "give --run RUN for the tuned strategies")
    return names


def _data_path(data, info) -> Path:
    if data is not None:
        return Path(data)
    if info is None:
        raise EvalError("no test data given", "pass --data FILE (or a run, whose test split is used)")
    path = info.dir / "data" / "test.jsonl"
    if not path.is_file():
        raise EvalError(f"run '{info.name}' has no test split ({path} is missing)", "pass --data FILE")
    return path


def _out_dir(out, info) -> Path:
    if out is not None:
        return Path(out)
    if info is None:
        raise EvalError("no place for the report", "pass --out DIR (or --run RUN to write it into the run folder)")
    return info.dir


def _train_path(train, info, cfg: Config) -> Path | None:
    if train is not None:
        return Path(train)
    if info is not None and (info.dir / "data" / "train.jsonl").is_file():
        return info.dir / "data" / "train.jsonl"
    return Path(cfg.data.train) if cfg.data.train else None


def _probe_mode(probe: str | None, cfg: Config, info, notes: list[str]) -> str:
    mode = probe if probe is not None else (cfg.eval.probe if info is not None else "none")
    if mode not in ("fast", "full", "none"):
        raise EvalError(f"unknown probe mode {mode!r}", "use --probe fast, --probe full or --no-probe")
    if mode != "none" and info is None:
        notes.append("forgetting probe skipped: it compares base and tuned, and no run was given")
        return "none"
    return mode


def _user_metrics(specs: Sequence[str], regex: str | None, json_schema: str | None) -> list[M.UserMetric]:
    out = [M.python_metric(s) for s in specs or ()]
    if regex:
        out.append(M.regex_metric(regex))
    if json_schema:
        out.append(M.json_schema_metric(json_schema))
    names = [m.name for m in out]
    clash = sorted({n for n in names if names.count(n) > 1 or n in M.METRICS})
    if clash:
        raise EvalError(f"metric name(s) used twice: {', '.join(clash)}", "give each user metric a distinct function name")
    return out


def _check_numbers(plan: Plan) -> None:
    e = plan.cfg.eval
    if e.max_new_tokens < 1 or e.batch_size < 1 or (plan.limit is not None and plan.limit < 1) or e.few_shot < 0 or e.rag_k < 1:
        raise EvalError("max_new_tokens, batch_size, limit and rag_k must be >= 1, few_shot >= 0",
                        "check --max-new-tokens, --batch-size, --limit and the eval section of the config")


# ------------------------------------------------------------------ 2-4. data


def _read(path: Path, plan: Plan, what: str) -> list[dict]:
    """Usable examples of a file in any format; rows with errors are left out and counted in the notes."""
    from tunesmith.data.formats import read_examples
    from tunesmith.data.rules import is_error

    if not path.is_file():
        raise EvalError(f"{what} not found: {path}")
    d = plan.cfg.data
    result = read_examples(path, format=d.format, mapping=d.map, system=d.system)
    if result.rows_read == 0:
        raise EvalError(f"{path}: the {what} file is empty", "give a file with at least one example")
    errors = [f for f in result.findings if is_error(f)]
    if errors and not result.examples:
        raise EvalError(f"{path}:{errors[0].line}: {errors[0].message} (no usable rows)", TEST_HINT.format(path=path))
    if errors:
        bad = len({f.line for f in errors})
        plan.notes.append(f"{path}: {bad} row(s) with errors left out, first at line {errors[0].line}: "
                          f"{errors[0].message} ({TEST_HINT.format(path=path)})")
    return result.examples


def _cases(examples: list[dict], plan: Plan) -> list[S.Case]:
    cases = [c for c in (S.to_case(e) for e in examples) if c is not None]
    skipped = len(examples) - len(cases)
    if skipped:
        plan.notes.append(f"{skipped} example(s) in {plan.data} have no assistant answer to compare against: skipped")
    if not cases:
        raise EvalError(f"{plan.data}: no example has a user turn followed by an answer", TEST_HINT.format(path=plan.data))
    return cases[: plan.limit] if plan.limit else cases


def _train_examples(plan: Plan) -> list[dict]:
    needs = any(n in ("prompt", "rag", "tuned+rag") for n in plan.strategies)
    if not needs and plan.train is None:
        return []
    if plan.train is None:
        if "prompt" in plan.strategies:
            plan.notes.append("no training data: the prompt strategy has a system prompt only, no few-shot examples")
        return []
    return _read(plan.train, plan, "training data")


def _overlap(test: list[dict], train: list[dict], plan: Plan) -> tuple[dict, set]:
    """(counts of test examples also in the training data, the lines of all of them).

    Exact copies and copies of the input refuse the run (unless allow_overlap): the model saw the
    question. A near copy of the input, beyond the context both files share (`data.dedup`), is
    reported in the notes and leaves the run going; `_clean` scores the rows without any match.
    """
    from tunesmith.data.dedup import Fingerprints, cross_matches, input_output

    if not train:
        return {"checked": False, "reason": "no training data to check against"}, set()
    a, b = Fingerprints(near=True), Fingerprints(near=True)
    for e in test:
        a.add(*input_output(e))
    for e in train:
        b.add(*input_output(e))
    m = cross_matches(a, b)
    exact = m.exact >= 0
    same = (m.same_input >= 0) & ~exact
    near = (m.near >= 0) & ~exact & ~same
    lines = [test[i].get("line") for i in range(len(test)) if exact[i] or same[i] or near[i]]
    seen = [test[i].get("line") for i in range(len(test)) if exact[i] or same[i]]
    near_rows = [{"line": test[i].get("line"), "train_line": train[int(m.near[i])].get("line"),
                  "input_similarity": float(m.input_similarity[i]), "output_similarity": float(m.output_similarity[i]),
                  "shared": m.why(i).shared} for i in map(int, near.nonzero()[0][:50])]
    counts = {"checked": True, "test": len(test), "train": len(train), "exact": int(exact.sum()),
              "same_input": int(same.sum()), "near": int(near.sum()), "lines": lines[:50], "seen_lines": seen[:50],
              "near_matches": near_rows}
    _overlap_notes(counts, plan)
    return counts, set(lines)


def _overlap_notes(counts: dict, plan: Plan) -> None:
    """Refuse exact and same-input overlap (unless allow_overlap); note it, and near overlap, otherwise."""
    seen, n = counts["exact"] + counts["same_input"], counts["test"]
    if seen and not plan.allow_overlap:
        raise EvalError(f"{seen} of {n} test examples are also in the training data ({plan.train}): "
                        f"{counts['exact']} exact, {counts['same_input']} with the same input "
                        f"(test lines {counts['seen_lines'][:5]}); {counts['near']} more have a near copy of their input there",
                        "scores on seen examples overstate the model; fix the split, or pass --allow-overlap")
    if seen:
        plan.notes.append(f"--allow-overlap: {seen} test examples also occur in the training data")
    if counts["near"]:
        first = counts["near_matches"][0]
        plan.notes.append(f"{counts['near']} of {n} test examples have a near copy of their input in the training "
                          f"data ({plan.train}), e.g. line {first['line']} and training line {first['train_line']} "
                          f"(inputs {first['input_similarity']:.2f} alike beyond the shared context): the metrics "
                          f"are also given on the test examples without such a match")


def _context(cases: list[S.Case], train_examples: list[dict], plan: Plan) -> S.Context:
    train_cases = [c for c in (S.to_case(e) for e in train_examples) if c is not None]
    ctx = S.Context(system=plan.system)
    if "prompt" in plan.strategies:
        ctx.shots = S.few_shot(train_cases, plan.cfg.eval.few_shot, plan.seed)
    rag = [n for n in plan.strategies if S.uses_rag(n)]
    if rag:
        hits = _retrieve(cases, train_cases, plan)
        for name in rag:
            ctx.retrieved[name] = hits
    return ctx


def _retrieve(cases: list[S.Case], train_cases: list[S.Case], plan: Plan) -> list[list[S.Case | str]]:
    """Per case, the top-k document chunks (--docs) or training examples, searched by the case's question."""
    from tunesmith.rag.chunking import load_docs
    from tunesmith.rag.retrieve import Retriever

    if plan.docs:
        passages = [c.text for c in load_docs(plan.docs)]
        items: list = passages  # a chunk is given as its text
    elif train_cases:
        items, passages = train_cases, [S.passage(c) for c in train_cases]  # an example is given as turns
    else:
        raise EvalError("the rag strategies need something to retrieve from",
                        "pass --docs FOLDER (.txt/.md files) or training data (--train FILE, or --run RUN)")
    retriever = Retriever(passages)
    return [[items[h.key] for h in hits] for hits in retriever.retrieve_many([c.query for c in cases], plan.cfg.eval.rag_k)]


# ------------------------------------------------------------------ 5-7. models, strategies, probe


@dataclass
class Loaded:
    base: tuple | None = None  # (model, tokenizer)
    tuned: tuple | None = None
    base_spec: str | None = None


def _load_models(plan: Plan) -> Loaded:
    from tunesmith.models.load import load_model

    loaded = Loaded()
    need_base = any(not S.uses_tuned(n) for n in plan.strategies) or plan.probe != "none"
    need_tuned = any(S.uses_tuned(n) for n in plan.strategies) or plan.probe != "none"
    device = plan.cfg.model.device
    if need_tuned:
        from tunesmith.runs.deliverable import load_run

        # the run gets its own copy of the base, so folding the adapter in is safe, and generation
        # skips the separate LoRA matmuls (~35% of a tiny model's forward time, profiled)
        loaded.tuned = load_run(plan.run, device=device, dtype=plan.cfg.model.dtype, merge=True)
    if need_base:
        loaded.base_spec = _base_spec(plan)
        loaded.base = load_model(loaded.base_spec, dtype=plan.cfg.model.dtype, allow_pickle=plan.cfg.model.allow_pickle,
                                 device=device)
    return loaded


def _base_spec(plan: Plan) -> str:
    from tunesmith.runs.deliverable import base_spec

    if plan.run is not None and (plan.run.base_model_path or plan.run.base_model):
        return base_spec(plan.run)
    return plan.cfg.model.name


def _run_strategy(name: str, cases: list[S.Case], ctx: S.Context, models: Loaded, plan: Plan, track) -> dict:
    """Answers, per-example metrics, response loss and timing for one strategy."""
    from tunesmith.models.engine import answer
    from tunesmith.train.loss import cross_entropy_sum

    model, tok = models.tuned if S.uses_tuned(name) else models.base
    prompts = [S.build_prompt(name, c, i, ctx) for i, c in enumerate(cases)]
    e = plan.cfg.eval
    start = time.time()
    scored = [S.with_answer(p, c.reference) for p, c in zip(prompts, cases)]
    # the reference's loss comes from the answer's own prefill where it can (one pass, not two)
    gens = answer(model, tok, prompts, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                  on_batch=track(f"{name}: answering", len(cases)), scored=scored, scorer=cross_entropy_sum)
    seconds = time.time() - start
    texts = [g.text for g in gens]
    values = M.per_example(texts, [c.reference for c in cases])
    values["loss"] = [g.score for g in gens]
    rest = [i for i, g in enumerate(gens) if g.score is None]
    if rest:
        for i, v in zip(rest, M.response_nll(model, tok, [scored[i] for i in rest], batch_size=e.batch_size,
                                             on_batch=track(f"{name}: loss", len(rest)))):
            values["loss"][i] = v
    if all(c.rejected is not None for c in cases):  # a preference test file: which answer the model prefers
        values["preference_accuracy"] = M.preference_wins(
            model, tok, [(p, c.reference, c.rejected) for p, c in zip(prompts, cases)], batch_size=e.batch_size,
            on_batch=track(f"{name}: preference", len(cases)))
    errors: dict[str, list] = {}
    for um in plan.user_metrics:
        scored = [um.score(t, c.reference) for t, c in zip(texts, cases)]
        values[um.name] = [v for v, _ in scored]
        errors[um.name] = [(cases[i].line, err) for i, (_, err) in enumerate(scored) if err]
    return {"answers": texts, "values": values, "errors": errors, "seconds": seconds,
            "tokens": [g.n_tokens for g in gens], "stopped": [g.stopped for g in gens]}


def _forgetting(models: Loaded, plan: Plan, track) -> dict:
    if plan.probe == "none":
        return {"skipped": "no run given" if plan.run is None else "--no-probe"}
    from tunesmith.evaluate import probe as P

    tasks = P.load_tasks(plan.probe)
    size = P.probe_size(tasks)
    b = plan.cfg.eval.batch_size
    base = P.run_probe(*models.base, tasks, batch_size=b, on_batch=track("probe: base model", size))
    tuned = P.run_probe(*models.tuned, tasks, batch_size=b, on_batch=track("probe: tuned model", size))
    out = P.forgetting(base, tuned, plan.cfg.eval.forgetting_threshold)
    out["mode"] = plan.probe
    coarse = max(100.0 / t["n"] for t in out["tasks"].values())
    if coarse > out["threshold"]:
        plan.notes.append(f"{plan.probe} probe: one question is worth up to {coarse:.1f} points, more than the "
                          f"{out['threshold']:g}-point threshold; `--probe full` gives a finer check")
    return out


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yields track(description, total) -> advance(n): one rich bar with ETA per piece of work.

    Logs and pipes get no live bar: a plain line when each piece of work is done instead.
    """
    if quiet:
        yield lambda description, total: (lambda n: None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        def track(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            started, done = time.time(), [0]

            def advance(n: int) -> None:
                progress.advance(task, n)
                done[0] += n
                if not console.is_terminal and done[0] >= total:
                    console.print(f"{description}: {total} done in {time.time() - started:.1f} s", highlight=False)

            return advance

        yield track


# ------------------------------------------------------------------ 8. numbers and report


def _intervals(results: dict[str, dict], plan: Plan) -> dict[str, dict]:
    from tunesmith.evaluate.stats import paired_bootstrap

    if "base" not in results:
        return {}
    out: dict[str, dict] = {}
    base = results["base"]["values"]
    for name, r in results.items():
        if name == "base":
            continue
        out[name] = {}
        for metric, values in r["values"].items():
            ci = paired_bootstrap(base[metric], values, lambda v, m=metric: M.aggregate(m, v), seed=plan.seed)
            out[name][metric] = ci.to_dict() if ci else None
    return out


def _clean(cases: list[S.Case], results: dict[str, dict], matched: set, plan: Plan) -> dict | None:
    """The metrics and intervals on the cases with no match in the training data, when some cases have one."""
    keep = [i for i, c in enumerate(cases) if c.line not in matched]
    if len(keep) == len(cases):
        return None
    subset = {name: {"values": {m: [v[i] for i in keep] for m, v in r["values"].items()}} for name, r in results.items()}
    return {"n_examples": len(keep), "left_out": len(cases) - len(keep),
            "strategies": {name: _metrics_of(r["values"]) for name, r in subset.items()} if keep else {},
            "intervals": _intervals(subset, plan) if keep else {}}


def _metrics_of(values: dict[str, list]) -> dict[str, Any]:
    """Every metric aggregated over per-example values (`evaluate.metrics.aggregate`), and perplexity."""
    row: dict[str, Any] = {metric: M.aggregate(metric, v) for metric, v in values.items()}
    row["perplexity"] = M.aggregate("perplexity", values["loss"])
    return row


def _summary_of(r: dict, n: int) -> dict:
    row = _metrics_of(r["values"])
    row["seconds_per_example"] = r["seconds"] / n
    row["examples_per_second"] = n / r["seconds"] if r["seconds"] else None
    row["tokens_generated"] = int(sum(r["tokens"]))
    row["tokens_per_example"] = sum(r["tokens"]) / n
    row["stopped_fraction"] = sum(r["stopped"]) / n
    row["metric_errors"] = {k: len(v) for k, v in r["errors"].items() if v}
    return row


def _report(plan: Plan, cases, results, intervals, forgetting, overlap, clean, models: Loaded, seconds: float) -> dict:
    n = len(cases)
    examples = []
    for i, c in enumerate(cases):
        examples.append({
            "line": c.line, "input": c.query, "reference": c.reference,
            "answers": {name: r["answers"][i] for name, r in results.items()},
            "scores": {name: {m: _scalar(r["values"][m][i]) for m in r["values"] if m != "bleu"} for name, r in results.items()},
        })
    errors = {name: {m: [{"line": line, "error": err} for line, err in v] for m, v in r["errors"].items() if v}
              for name, r in results.items()}
    notes = list(plan.notes) + [f"forgetting: {w}" for w in forgetting.get("warnings", [])]
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": plan.run.name if plan.run is not None else None,
        "data": str(plan.data), "n_examples": n, "limit": plan.limit,
        "base_model": models.base_spec or (plan.run.base_model if plan.run is not None else None),
        "settings": {"max_new_tokens": plan.cfg.eval.max_new_tokens, "batch_size": plan.cfg.eval.batch_size,
                     "few_shot": plan.cfg.eval.few_shot, "rag_k": plan.cfg.eval.rag_k, "docs": plan.docs,
                     "system": plan.system, "probe": plan.probe, "seed": plan.seed, "train": str(plan.train) if plan.train else None},
        "strategies": {name: _summary_of(r, n) for name, r in results.items()},
        "intervals": intervals,
        "clean": clean,  # the same numbers without the test examples that have a match in training, or None
        "forgetting": forgetting,
        "overlap": overlap,
        "metric_errors": {k: v for k, v in errors.items() if v},
        "metrics": {**{k: v[1] for k, v in M.METRICS.items()}, **{m.name: "user metric" for m in plan.user_metrics}},
        "notes": notes,
        "seconds": seconds,
        "examples": examples,
    }


def _scalar(v: Any) -> Any:
    """Loss per example as nats per token; other per-example values as they are."""
    if isinstance(v, tuple):
        return v[0] / v[1] if v[1] else None
    return v


def _training_metrics(plan: Plan) -> list[dict]:
    if plan.run is None:
        return []
    from tunesmith.runs.layout import read_metrics

    return read_metrics(plan.run.paths)
