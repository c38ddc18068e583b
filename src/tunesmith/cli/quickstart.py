"""`tunesmith quickstart`: the whole path on the embedded model and the bundled example, in minutes on a CPU.

    1. check the data            (tunesmith data check)
    2. prepare and train LoRA    (tunesmith train: splits, a short run with validation)
    3. compare on held-out data  (tunesmith eval: base / prompt / rag / tuned / tuned+rag, forgetting probe,
                                  report.html with plots)
    4. print the next commands and the wall time
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

EXAMPLE = Path("examples/support-faq/faq.jsonl")
EXAMPLE_SYSTEM = "You answer customers' questions about building permits and construction in Sweden."


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart_cmd)


def quickstart_cmd(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="base model: store name, folder or GGUF"),
    data: Path = typer.Option(EXAMPLE, "--data", help="training data (any supported format)"),
    steps: int = typer.Option(40, "--steps", help="optimizer steps of 8 examples: 40 take about 5 minutes on a 2-core CPU"),
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", help="folder for the run"),
    samples: int = typer.Option(3, "--samples", help="held-out answers shown, base vs tuned"),
    limit: int = typer.Option(20, "--limit", help="test examples in the comparison of strategies"),
    probe: str = typer.Option("fast", "--probe", help="forgetting probe: fast | full | none"),
    max_new_tokens: int = typer.Option(80, "--max-new-tokens", help="longest sample answer, in tokens"),
    lr: float = typer.Option(1e-3, "--lr", help="peak learning rate (higher than train's default: the run is short)"),
) -> None:
    """Check the example data, fine-tune LoRA on it for a few minutes, then show base vs tuned."""
    from tunesmith.cli.common import console
    from tunesmith.config import load_config
    from tunesmith.errors import ConfigError
    from tunesmith.train.finetune import finetune

    if steps < 1 or samples < 0 or max_new_tokens < 1 or limit < 1 or probe not in ("fast", "full", "none"):
        raise ConfigError("--steps, --limit and --max-new-tokens must be >= 1, --samples >= 0, --probe fast|full|none")
    started = time.time()
    _check(data, console)
    console.print(f"[bold][2/4][/] prepare the splits and train LoRA on {model} for {steps} steps")
    system = [f"data.system={EXAMPLE_SYSTEM}"] if data == EXAMPLE else []
    cfg = load_config(None, [f"model.name={model}", f"data.train={data}", "method.name=lora", f"output_dir={output_dir}",
                             f"train.max_steps={steps}", f"train.eval_every={max(1, steps // 2)}", f"train.lr={lr}",
                             f"train.save_every={steps}", "train.batch_size=8", *system])
    run = finetune(cfg, name=f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}")
    _compare(run, samples, max_new_tokens, limit, probe, console)
    _next_steps(run, console)
    console.print(f"quickstart done in {time.time() - started:.0f} s (wall time)")


def _check(data: Path, console) -> None:
    from tunesmith.data.check import check
    from tunesmith.errors import DataError

    if not data.is_file():
        raise DataError(f"data file not found: {data}", "run quickstart from the repository root, or pass --data FILE")
    report = check(data)
    s = report.summary
    console.print(f"[bold][1/4][/] check {data}: {s['usable_rows']} usable of {s['rows_read']} rows, "
                  f"{s['errors']} errors, {s['warnings']} warnings; {s['verdict']['message']}", highlight=False, soft_wrap=True)
    if report.errors:
        raise DataError(f"{data} has {report.errors} error(s)", f"see them with `tunesmith data check {data}`")


def _compare(run, samples: int, max_new_tokens: int, limit: int, probe: str, console) -> None:
    """Validation loss base vs tuned, then every strategy on the test split (report.html)."""
    import json

    from tunesmith.data.prepare import load_split
    from tunesmith.evaluate import compare_for_quickstart
    from tunesmith.evaluate.report import differing_examples
    from tunesmith.models.adapters import base_model_of
    from tunesmith.runs.deliverable import load_run
    from tunesmith.train.finetune import score

    console.print(f"[bold][3/4][/] compare on held-out data: validation loss, then every strategy on {limit} test examples")
    model, tok = load_run(run.dir, device="cpu")  # score() below runs on the CPU
    validation = load_split(run.dir / "data" / "validation.jsonl")
    if validation:
        with base_model_of(model):
            base = score(model, tok, validation)
        tuned = score(model, tok, validation)
        console.print(f"validation loss: base {base['loss']:.3f} -> tuned {tuned['loss']:.3f}; "
                      f"next-token accuracy {100 * base['token_accuracy']:.1f}% -> {100 * tuned['token_accuracy']:.1f}%")
    del model
    html = compare_for_quickstart(run.dir, limit=limit, max_new_tokens=max_new_tokens, probe=probe)
    report = json.loads((html.parent / "report.json").read_text(encoding="utf-8"))
    _print_strategies(report, console)
    other, examples = differing_examples(report, samples)
    for ex in examples:
        console.print(f"\n[bold]Q:[/] {ex['input']}", highlight=False, soft_wrap=True)
        console.print(f"[dim]expected:[/] {ex['reference']}", highlight=False, soft_wrap=True)
        console.print(f"[yellow]base:[/]     {ex['answers'].get('base', '')}", highlight=False, soft_wrap=True)
        console.print(f"[green]{other}:[/]    {ex['answers'].get(other, '')}", highlight=False, soft_wrap=True)
    console.print(f"\nreport: {html}", highlight=False, soft_wrap=True)


def _print_strategies(report: dict, console) -> None:
    from rich.table import Table

    from tunesmith.cli.common import print_table

    table = Table("strategy", "exact match", "token F1", "ROUGE-L", "BLEU", "s / example")
    for name, m in report.get("strategies", {}).items():
        cells = [m.get(k) for k in ("exact_match", "token_f1", "rouge_l", "bleu", "seconds_per_example")]
        table.add_row(name, *("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in cells))
    print_table(table, console)
    tasks = (report.get("forgetting") or {}).get("tasks") or {}
    for task, t in tasks.items():
        console.print(f"forgetting probe {task}: base {t['base']:.1f} -> tuned {t['tuned']:.1f} "
                      f"({t['change']:+.1f} points, {t['n']} rows)", highlight=False)


def _next_steps(run, console) -> None:
    console.print(f"\n[bold][4/4][/] run [bold]{run.name}[/] is in {run.dir}; next:", highlight=False, soft_wrap=True)
    for command, why in [
        (f"tunesmith runs show {run.name}", "the run's record"),
        (f"tunesmith eval {run.name}", "score it on the test split against the base model"),
        (f"tunesmith chat {run.name}", "talk to the tuned model"),
        (f"tunesmith serve {run.name}", "an OpenAI-compatible API on http://127.0.0.1:8000"),
        (f"tunesmith export {run.name} --format merged", "a standalone model folder"),
    ]:
        console.print(f"  {command:<44} # {why}", markup=False, highlight=False, soft_wrap=True)
