"""`tunesmith data check | prepare | preview | pairs`: the data quality report, leak-free splits, the loss mask made
visible, and preference pairs built from input/output data."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from tunesmith.cli.common import console, err_console, print_json, print_table

data_app = typer.Typer(help="Check, prepare and preview training data; build preference pairs.", no_args_is_help=True)
TABLE_ROWS = 50

FORMAT_HELP = ("input format (messages, sharegpt, alpaca, prompt-completion, input-output, text, preference, "
               "openai-preference); default: detect")
MAP_HELP = "rename fields before detection, e.g. input=question,output=answer"


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _existing(path: Path) -> Path:
    from tunesmith.errors import DataError

    if not path.exists():
        raise DataError(f"no such file: {path}", "check the path")
    return path


def _tokenizer(model: str | None):
    """`model`'s tokenizer (its weights are not loaded), or None without a model."""
    if model is None:
        return None
    from tunesmith.models.load import load_tokenizer_only

    return load_tokenizer_only(model)


def count_lines(path: Path, limit_bytes: int = 2 << 30) -> int | None:
    """Newlines in an uncompressed text file (fast, in 1 MB blocks); None for other files."""
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".csv", ".tsv") or path.stat().st_size > limit_bytes:
        return None
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


@contextlib.contextmanager
def row_progress(path: Path, what: str, *, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """Yield a callback taking the rows done so far; shows a bar on stderr unless `quiet`."""
    if quiet:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = count_lines(path)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(f"{what} {path.name}", total=total)
        yield lambda n: bar.update(task, completed=n)


@data_app.command("check")
def check_cmd(
    file: Path = typer.Argument(..., help="the data file (.jsonl, .json, .csv, .tsv, .parquet, or .gz of those)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model whose tokenizer and template to measure with"),
    method: str = typer.Option("lora", "--method", help="lora | full: the method the time estimate measures"),
    against: Optional[Path] = typer.Option(None, "--against", help="another file (e.g. the test set) to check for overlap"),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    map: Optional[str] = typer.Option(None, "--map", help=MAP_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="system prompt added to conversations without one"),
    max_length: int = typer.Option(1024, "--max-length", help="longest sequence in tokens (as data.max_length)"),
    no_estimate: bool = typer.Option(False, "--no-estimate", help="skip the measured time-per-epoch estimate"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the speed measurement (as train.threads)"),
    json_out: bool = typer.Option(False, "--json", help="print {summary, issues} as JSON"),
) -> None:
    """Report every problem in FILE at once, and whether it is ready to fine-tune on. Exit 1 if there are errors."""
    from tunesmith.data.check import CheckOptions, check, tokenizer_for_check
    from tunesmith.data.formats import resolve_format, parse_mapping

    if method not in ("lora", "full"):
        raise typer.BadParameter("expected lora or full", param_hint="--method")
    resolve_format(format), parse_mapping(map)  # usage errors before any work
    _existing(file)
    if against is not None:
        _existing(against)
    tokenizer, tokenizer_name, notes = tokenizer_for_check(model)
    opts = CheckOptions(format=format, mapping=map, system=system, tokenizer=tokenizer, tokenizer_name=tokenizer_name,
                        notes=notes, max_length=max_length, against=against)
    with row_progress(file, "checking", quiet=json_out) as advance:
        opts.progress = advance
        report = check(file, opts)
    if model and not no_estimate and report.summary.get("tokens"):
        from tunesmith.data.readiness import add_estimate

        with err_console.status(f"measuring {method} training speed of {model} on 2 rows..."):
            add_estimate(report.summary, report.sample, model, method, max_length=max_length, threads=threads)
    if json_out:
        print_json(report.to_dict())
    else:
        _print_report(report)
    if report.errors:
        raise typer.Exit(1)


def _print_report(report) -> None:
    from rich.table import Table

    s = report.summary
    if report.issues:
        table = Table("line", "field", "rule", "severity", "message", show_lines=False)
        for f in report.issues[:TABLE_ROWS]:
            style = "red" if f.severity == "error" else "yellow"
            table.add_row(str(f.line) if f.line else "-", f.field or "-", f.rule, f"[{style}]{f.severity}[/]", f.message)
        print_table(table)
        if len(report.issues) > TABLE_ROWS:
            console.print(f"[dim]first {TABLE_ROWS} of {len(report.issues)} findings shown; --json lists them all[/]")
        counts = ", ".join(f"{rule} {v['count']}" for rule, v in s["by_rule"].items())
        console.print(f"by rule: {counts}")
    console.print(f"{s['file']}: format {s['format'] or 'unknown'}, {s['rows_read']} rows read, "
                  f"{s['rows_with_errors']} with errors, {s['usable_rows']} usable; "
                  f"[red]{s['errors']} error(s)[/], [yellow]{s['warnings']} warning(s)[/]")
    if s.get("shared_context_rows"):
        from tunesmith.data.context import CONTEXT_ROWS, CONTEXT_WORDS

        console.print(f"{s['shared_context_rows']} rows share a passage of {CONTEXT_WORDS}+ words with "
                      f"{CONTEXT_ROWS - 1}+ other rows (a schema, instructions, a template): it is left out when rows "
                      "are compared for near duplicates (docs/data-quality.md)")
    if s.get("tokens"):
        t = s["tokens"]
        console.print(f"tokens per row (tokenizer: {s['tokenizer']}): min {t['min']}, median {t['median']}, "
                      f"p95 {t['p95']}, max {t['max']}; {t['trainable_tokens']:,} trainable tokens; "
                      f"{t['rows_truncated']} row(s) over max_length {t['max_length']} ({t['tokens_cut']:,} tokens cut)",
                      markup=False)
    if s.get("pairs", {}).get("pairs"):
        p = s["pairs"]
        console.print(f"{p['pairs']} pairs: chosen answers {p['chosen_chars']:.0f} characters on average, rejected "
                      f"{p['rejected_chars']:.0f} (ratio {p['ratio']:.2f}); chosen is the longer in "
                      f"{p['chosen_longer']:.0%}; {p['contradictions']} contradicting pair(s)", markup=False)
    for note in s.get("notes", []):
        console.print(f"note: {note}", markup=False, style="yellow")
    _print_verdict(s["verdict"], measured=bool(s.get("tokens")), pairs="pairs" in s)


def _print_verdict(v: dict, *, measured: bool, pairs: bool = False) -> None:
    colour = {"ready": "green", "enough-to-start": "green", "too-little": "yellow", "fix-data": "red"}[v["level"]]
    console.print(f"[bold {colour}]verdict: {v['message']}[/] ({'; '.join(v['reasons'])})")
    e = v.get("estimate")
    if e:
        minutes = e["seconds_per_epoch"] / 60 if e["seconds_per_epoch"] is not None else float("nan")
        console.print(f"one epoch: {e['train_rows']} rows, {e['tokens']:,} tokens ({e['trainable_tokens']:,} trained); "
                      f"measured {e['tokens_per_second']:.0f} tokens/s ({e['method']}, {e['model']}) "
                      f"-> about {minutes:.1f} min per epoch on this machine")
        if e.get("busy"):
            console.print(f"[yellow]the machine was busy (load {e['load_average']} on {e['cpu_cores']} cores): "
                          "the estimate is pessimistic; try --threads 1, or measure again when it is idle[/]")
    elif v["level"] != "fix-data" and not pairs:  # no estimate for pairs (see readiness.add_estimate)
        more = "a measured time per epoch" if measured else "token statistics and a measured time per epoch"
        console.print(f"[dim]add --model NAME for {more}[/]")


@data_app.command("prepare")
def prepare_cmd(
    file: Path = typer.Argument(..., help="the data file"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for train/validation/test/rejected .jsonl and data_card.json "
                             "(an existing one must be empty or an earlier prepare output, unless --overwrite)"),
    split: str = typer.Option("80/10/10", "--split", help="train/validation/test percentages"),
    seed: int = typer.Option(42, "--seed", help="seed of the split"),
    near_duplicates: str = typer.Option("keep", "--near-duplicates",
                                        help="keep | drop near duplicates (input and answer near copies; see docs/data-quality.md)"),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    map: Optional[str] = typer.Option(None, "--map", help=MAP_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="system prompt added to conversations without one"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="add token statistics with this model's tokenizer"),
    max_length: int = typer.Option(1024, "--max-length", help="longest sequence in tokens, for the statistics"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out and everything in it even when it holds "
                                   "other files (never the folder of FILE, the working folder or home)"),
    json_out: bool = typer.Option(False, "--json", help="print the data card as JSON"),
) -> None:
    """Normalise, deduplicate and split FILE into canonical train/validation/test files (atomic writes)."""
    from tunesmith.data.prepare import prepare

    if near_duplicates not in ("drop", "keep"):
        raise typer.BadParameter("expected keep or drop", param_hint="--near-duplicates")
    _existing(file)
    with err_console.status(f"preparing {file}..."):
        card = prepare(file, out, split=split, seed=seed, near_duplicates=near_duplicates, format=format,
                       mapping=map, system=system, tokenizer=_tokenizer(model), max_length=max_length,
                       overwrite=overwrite)
    if json_out:
        return print_json(card)
    sp = card["splits"]
    console.print(f"{card['rows_read']} rows read: {card['kept']} kept (train {sp['train']}, validation "
                  f"{sp['validation']}, test {sp['test']}), {card['rejected']} rejected "
                  f"{card['rejected_by_reason'] or ''}")
    if card.get("kept_with_warnings"):
        console.print(f"kept with warnings: {card['kept_with_warnings']} (`tunesmith data check {file}` shows each)")
    console.print(f"wrote {out}/train.jsonl, validation.jsonl, test.jsonl, rejected.jsonl, data_card.json "
                  f"(fingerprint {card['fingerprint'][:12]})")


@data_app.command("preview")
def preview_cmd(
    file: Path = typer.Argument(..., help="the data file"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="model whose chat template renders the rows"),
    n: int = typer.Option(3, "-n", help="how many examples"),
    max_length: int = typer.Option(1024, "--max-length", help="longest sequence in tokens"),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    map: Optional[str] = typer.Option(None, "--map", help=MAP_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="system prompt added to conversations without one"),
) -> None:
    """Show examples as the model sees them; the highlighted tokens are the ones it learns."""
    from rich.text import Text

    from tunesmith.data.preview import preview_file

    _existing(file)
    previews = preview_file(file, _tokenizer(model), n=n, max_length=max_length, format=format, mapping=map, system=system)
    if not previews:
        console.print(f"no usable examples in {file}; run `tunesmith data check {file}`")
        raise typer.Exit(1)
    for p in previews:
        console.rule(f"line {p.line}{f' ({p.side})' if p.side else ''}: {p.tokens} tokens, {p.trained} trained" + (f", {p.truncated} cut" if p.truncated else ""))
        text = Text()
        for chunk, trained in p.runs:
            text.append(chunk, style="bold black on green" if trained else "dim")
        console.print(text)
    console.print("[bold black on green] highlighted [/] = trained (loss taken), [dim]dim[/] = context only")


@data_app.command("pairs")
def pairs_cmd(
    file: Path = typer.Argument(..., help="input/output (SFT) data: its answers become the chosen ones"),
    out: Path = typer.Option(..., "--out", "-o", help="the pairs file (.jsonl) to write, or to continue: only one "
                             "this command made from FILE with the same settings is ever continued, nothing else replaced"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="the model that samples the rejected answers "
                                        "(default: the embedded smollm2-135m-instruct)"),
    run: Optional[str] = typer.Option(None, "--run", help="sample with a trained run (name or folder) instead of --model"),
    seed: int = typer.Option(0, "--seed", help="sampling seed: the same seed writes the same file"),
    temperature: float = typer.Option(0.8, "--temperature", help="sampling temperature (0 = greedy)"),
    top_p: float = typer.Option(0.95, "--top-p", help="nucleus sampling threshold"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="longest sampled answer in tokens"),
    limit: Optional[int] = typer.Option(None, "--limit", help="the first N examples only"),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    map: Optional[str] = typer.Option(None, "--map", help=MAP_HELP),
    system: Optional[str] = typer.Option(None, "--system", help="system prompt added to conversations without one"),
    device: str = typer.Option("auto", "--device", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N"),
    rejected: str = typer.Option("sample", "--rejected", help="sample: the model's sampled answer to the same prompt; "
                                 "similar: FILE's answer to the most similar other prompt (no model runs)"),
    json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Build preference pairs from FILE: chosen = its answer, rejected = a sampled one or a similar prompt's (resumable)."""
    from tunesmith.data.formats import parse_mapping, resolve_format
    from tunesmith.data.pairs import SKIPPED, PairOptions, build_pairs, check_options

    options = PairOptions(model=model, run=run, seed=seed, temperature=temperature, top_p=top_p,
                          max_new_tokens=max_new_tokens, limit=limit, format=format, mapping=map, system=system,
                          device=device, rejected=rejected)
    resolve_format(format), parse_mapping(map), check_options(options)  # usage errors before any work
    _existing(file)
    with _pair_progress(out, quiet=json_out) as advance:
        summary = build_pairs(file, out, options, progress=advance)
    if json_out:
        return print_json({**summary.__dict__, "out": str(summary.out)})
    again = f", {summary.resumed} of them there before" if summary.resumed else ""
    how = "" if rejected == "similar" else "sampled by "
    console.print(f"{summary.written} pairs in {out}{again} (rejected answers: {how}{summary.model})", markup=False)
    for why, n in summary.skipped.items():
        console.print(f"skipped {n} example(s): {SKIPPED[why]}", markup=False, style="yellow")


@contextlib.contextmanager
def _pair_progress(out: Path, *, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A callback taking (pairs done, total): a bar with the time remaining on stderr unless `quiet`."""
    if quiet:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, transient=True) as bar:
        task = bar.add_task(f"writing pairs into {out.name}", total=None)
        started = False

        def advance(done: int, total: int) -> None:
            nonlocal started
            if not started:  # the pairs already there are no measure of speed: the time remaining counts from here
                bar.reset(task, total=total, completed=done)
                started = True
            bar.update(task, completed=done)

        yield advance
