"""`tunesmith eval RUN` and `tunesmith compare --data FILE`: thin shells over tunesmith.evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

STRATEGIES_HELP = "comma-separated: base,prompt,rag,tuned,tuned+rag (default: the config's eval.strategies)"


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)


# The options eval and compare share (typer reads these defaults; one declaration each).
LIMIT = typer.Option(None, "--limit", help="evaluate only the first N examples")
DOCS = typer.Option(None, "--docs", help="folder of .txt/.md files for the rag strategies")
SYSTEM = typer.Option(None, "--system", help="system prompt for the prompt strategy")
ALLOW_OVERLAP = typer.Option(False, "--allow-overlap",
                             help="go on when test examples (or their inputs) are also in the training data")
NO_PROBE = typer.Option(False, "--no-probe", help="skip the forgetting probe")
METRIC = typer.Option([], "--metric", help="user metric module:function or file.py:function (repeatable)")
REGEX = typer.Option(None, "--regex", help="metric: the answer contains a match of this regular expression")
JSON_SCHEMA = typer.Option(None, "--json-schema", help="metric: the answer is JSON valid under this schema")
MAX_NEW_TOKENS = typer.Option(None, "--max-new-tokens", help="longest answer in tokens")
DEVICE = typer.Option(None, "--device", help="auto (a CUDA GPU when present), cpu, cuda or cuda:N")
BATCH_SIZE = typer.Option(None, "--batch-size", help="generation batch size")
JSON_OUT = typer.Option(False, "--json", help="print the numbers as JSON")


def eval_cmd(
    run: str = typer.Argument(..., help="run name or folder"),
    data: Optional[Path] = typer.Option(None, "--data", help="test file (default: the run's test split)"),
    strategies: Optional[str] = typer.Option(None, "--strategies", help=STRATEGIES_HELP),
    limit: Optional[int] = LIMIT,
    docs: Optional[Path] = DOCS,
    system: Optional[str] = SYSTEM,
    allow_overlap: bool = ALLOW_OVERLAP,
    probe: Optional[str] = typer.Option(None, "--probe", help="forgetting probe: fast (default), full or none"),
    no_probe: bool = NO_PROBE,
    metric: List[str] = METRIC,
    regex: Optional[str] = REGEX,
    json_schema: Optional[Path] = JSON_SCHEMA,
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    device: Optional[str] = DEVICE,
    batch_size: Optional[int] = BATCH_SIZE,
    json_out: bool = JSON_OUT,
) -> None:
    """Evaluate a run on held-out data: every strategy side by side, the forgetting probe, RUN/report.html."""
    from tunesmith.evaluate import evaluate_run

    result = evaluate_run(run, data, strategies=strategies, limit=limit, docs=_str(docs), system=system,
                          allow_overlap=allow_overlap, probe=_probe(probe, no_probe), metrics=metric, regex=regex,
                          json_schema=_str(json_schema), max_new_tokens=max_new_tokens, device=device, batch_size=batch_size,
                          quiet=json_out)
    _show(result, json_out)


def compare_cmd(
    data: Path = typer.Option(..., "--data", help="test file: any format `tunesmith data check` reads"),
    run: Optional[str] = typer.Option(None, "--run", help="a fine-tuned run, for the tuned strategies"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for report.html/report.json (default: the run's folder)"),
    strategies: Optional[str] = typer.Option(None, "--strategies", help=STRATEGIES_HELP),
    limit: Optional[int] = LIMIT,
    train: Optional[Path] = typer.Option(None, "--train", help="training examples for few-shot and rag (default: the run's)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="base model without a run (default: the config's)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config for the eval and data settings"),
    docs: Optional[Path] = DOCS,
    system: Optional[str] = SYSTEM,
    allow_overlap: bool = ALLOW_OVERLAP,
    probe: Optional[str] = typer.Option(None, "--probe", help="forgetting probe with --run: fast, full or none (default: none)"),
    no_probe: bool = NO_PROBE,
    metric: List[str] = METRIC,
    regex: Optional[str] = REGEX,
    json_schema: Optional[Path] = JSON_SCHEMA,
    max_new_tokens: Optional[int] = MAX_NEW_TOKENS,
    device: Optional[str] = DEVICE,
    batch_size: Optional[int] = BATCH_SIZE,
    json_out: bool = JSON_OUT,
) -> None:
    """Compare base, prompt engineering, RAG (and, with --run, fine-tuned and fine-tuned + RAG) on a test file."""
    from tunesmith.evaluate import compare

    result = compare(data, run=run, out=out, config=config, strategies=strategies, limit=limit, docs=_str(docs),
                     system=system, train=train, model=model, allow_overlap=allow_overlap, probe=_probe(probe, no_probe),
                     metrics=metric, regex=regex, json_schema=_str(json_schema), max_new_tokens=max_new_tokens,
                     batch_size=batch_size, quiet=json_out, device=device)
    _show(result, json_out)


def _str(path: Optional[Path]) -> Optional[str]:
    return str(path) if path is not None else None


def _probe(probe: Optional[str], no_probe: bool) -> Optional[str]:
    from tunesmith.errors import EvalError

    if no_probe and probe not in (None, "none"):
        raise EvalError(f"--no-probe and --probe {probe} contradict each other", "give one of them")
    return "none" if no_probe else probe


def _show(result, json_out: bool) -> None:
    """The strategies table (and the one without test rows seen in training), the warnings, the report's path."""
    from tunesmith.cli.common import console, print_json, print_table

    r = result.report
    if json_out:
        return print_json({**{k: v for k, v in r.items() if k != "examples"}, "report_html": str(result.html),
                           "report_json": str(result.json)})
    print_table(_table(r["strategies"], r["intervals"]))
    clean = r.get("clean")
    if clean and clean["strategies"]:
        title = (f"on the {clean['n_examples']} of {r['n_examples']} test examples with no match in the training data "
                 f"({clean['left_out']} left out)")
        print_table(_table(clean["strategies"], clean["intervals"], title))
    for task, t in (r["forgetting"].get("tasks") or {}).items():
        console.print(f"probe {task}: {t['base']:.1f}% -> {t['tuned']:.1f}% ({t['change']:+.1f} points)")
    for note in r["notes"]:
        console.print(f"[yellow]warning:[/] {note}", markup=True)
    console.print(f"{r['n_examples']} examples in {r['seconds']:.1f} s; report: {result.html}")


def _table(rows: dict, intervals: dict, title: str | None = None):
    """A rich table of metrics per strategy and ROUGE-L against base with its interval (timing where the rows have it)."""
    from rich.table import Table

    pairs = any(row.get("preference_accuracy") is not None for row in rows.values())  # a preference test file
    extra = ("preference accuracy", "vs base (preference, 95% CI)") if pairs else ()
    table = Table("strategy", "exact match", "token F1", "ROUGE-L", "BLEU", "loss", "vs base (ROUGE-L, 95% CI)", *extra,
                  "s / example", "tokens", title=title)
    for name, row in rows.items():
        cells = [_vs((intervals.get(name) or {}).get("rouge_l"))]
        if pairs:
            cells += [_num(row.get("preference_accuracy")), _vs((intervals.get(name) or {}).get("preference_accuracy"))]
        table.add_row(name, *(_num(row.get(m)) for m in ("exact_match", "token_f1", "rouge_l", "bleu", "loss")), *cells,
                      _num(row.get("seconds_per_example"), ".2f"), str(row.get("tokens_generated", "-")))
    return table


def _vs(ci: dict | None) -> str:
    return f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci else "-"


def _num(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)
