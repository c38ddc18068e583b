"""The evaluation report: report.json (every number) and a self-contained report.html with embedded PNG plots.

When some test examples have a match in the training data, a second table gives every metric on
all test examples and on the others (`clean`) side by side, with the near matches listed.

Plots (matplotlib, Agg backend, no display needed): training and validation loss, the strategy
comparison with bootstrap intervals, the forgetting change per task. Each plot is an <img> with a
fixed id (plot-loss, plot-strategies, plot-forgetting); when there is nothing to plot, the id is
on a short note that says why.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from tunesmith.io import atomic_write_json, atomic_write_text

PLOTTED = ("exact_match", "token_f1", "rouge_l", "bleu")
TABLE_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "loss", "perplexity")
EXAMPLES_SHOWN = 10


def write_report(report: dict, out_dir: str | Path, *, metrics_rows: list[dict] | None = None) -> tuple[Path, Path]:
    """Write report.json and report.html into `out_dir` (atomically); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = atomic_write_json(out / "report.json", report)
    html_path = atomic_write_text(out / "report.html", render_html(report, metrics_rows or []))
    return html_path, json_path


def render_html(report: dict, metrics_rows: list[dict]) -> str:
    plots = {
        "plot-loss": (loss_plot(metrics_rows), "no training metrics (this comparison has no run)"),
        "plot-strategies": (strategies_plot(report), "no strategy results"),
        "plot-forgetting": (forgetting_plot(report.get("forgetting", {})),
                            f"forgetting probe skipped: {report.get('forgetting', {}).get('skipped', 'no data')}"),
    }
    sections = [
        _header(report), _notes(report), "<h2>Strategies</h2>", _strategy_table(report), _clean_section(report),
        _img(plots, "plot-strategies"),
        "<h2>Training</h2>", _img(plots, "plot-loss"), _samples_table(metrics_rows),
        "<h2>Forgetting (general knowledge)</h2>", _forgetting_table(report.get("forgetting", {})), _img(plots, "plot-forgetting"),
        "<h2>Where the answers differ most</h2>", _examples_table(report),
        "<h2>Metrics</h2>", _metric_help(report),
    ]
    title = f"tunesmith report: {html.escape(report.get('run') or 'comparison')}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
            f"<body><h1>{title}</h1>{''.join(sections)}</body></html>\n")


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}.warn{color:#a40000}
.note{color:#666}img{max-width:100%}td.text{max-width:320px;white-space:pre-wrap;font-size:90%}"""


def _samples_table(rows: list[dict]) -> str:
    """Sample answers at every validation: one row per step (0 = before training), one column per prompt."""
    steps = [r for r in rows if r.get("split") == "samples" and r.get("samples")]
    if not steps:
        return ""
    prompts = max((r["samples"] for r in steps), key=len)  # sample_answers may change on resume
    head = "".join(f"<th>{html.escape(p['prompt'][:200])}<br><span class='note'>expected: "
                   f"{html.escape(p.get('expected', '')[:200])}</span></th>" for p in prompts)
    body = []
    for r in steps:
        cells = "".join(f"<td class='text'>{html.escape(a['answer'])}</td>" for a in r["samples"])
        cells += "<td></td>" * (len(prompts) - len(r["samples"]))
        label = "0 (base)" if r["step"] == 0 else str(r["step"])
        body.append(f"<tr><td class='num'>{label}</td>{cells}</tr>")
    return ("<h3 id='samples'>Sample answers during training</h3><p class='note'>The same validation prompts, answered "
            "greedily at every validation: the style arriving, and degrading where it overfits.</p>"
            f"<table><tr><th>step</th>{head}</tr>{''.join(body)}</table>")


# ------------------------------------------------------------------ plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import matplotlib.pyplot as plt

    return plt


def loss_plot(rows: list[dict]) -> str | None:
    """Training and validation loss against the step, from a run's metrics.jsonl rows."""
    series = {split: [(r["step"], r["loss"]) for r in rows if r.get("split") == split and r.get("loss") is not None]
              for split in ("train", "validation")}
    if not any(series.values()):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, points in series.items():
        if points:
            ax.plot(*zip(*points), marker="o" if split == "validation" else None, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def strategies_plot(report: dict) -> str | None:
    """Top: each metric per strategy. Bottom: the difference from base with its 95% bootstrap interval."""
    strategies = report.get("strategies", {})
    if not strategies:
        return None
    plt = _pyplot()
    names = list(strategies)
    fig, axes = plt.subplots(2, len(PLOTTED), figsize=(3.2 * len(PLOTTED), 6), squeeze=False)
    for col, metric in enumerate(PLOTTED):
        values = [strategies[n].get(metric) or 0.0 for n in names]
        axes[0][col].bar(names, values, color="#4c72b0")
        axes[0][col].set_title(metric)
        _diff_panel(axes[1][col], report.get("intervals", {}), names, metric)
        for row in (0, 1):
            axes[row][col].tick_params(axis="x", labelrotation=45)
    axes[1][0].set_ylabel("difference from base (95% CI)")
    fig.tight_layout()
    return _png(fig)


def _diff_panel(ax, intervals: dict, names: list[str], metric: str) -> None:
    others = [n for n in names if n != "base" and (intervals.get(n) or {}).get(metric)]
    ax.axhline(0, color="#888", linewidth=1)
    if not others:
        ax.text(0.5, 0.5, "no base to compare with", ha="center", va="center", transform=ax.transAxes)
        return
    cis = [intervals[n][metric] for n in others]
    diffs = [c["diff"] for c in cis]
    err = [[c["diff"] - c["low"] for c in cis], [c["high"] - c["diff"] for c in cis]]
    colors = ["#2a9d2a" if c["significant"] and c["diff"] > 0 else "#c03030" if c["significant"] else "#999" for c in cis]
    ax.bar(others, diffs, yerr=err, color=colors, capsize=4)


def forgetting_plot(forgetting: dict) -> str | None:
    """Base and tuned score per probe task (percent), with the change in points above each pair."""
    tasks = forgetting.get("tasks") or {}
    if not tasks:
        return None
    plt = _pyplot()
    names = list(tasks)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([i - 0.2 for i in x], [tasks[n]["base"] for n in names], width=0.4, label="base")
    ax.bar([i + 0.2 for i in x], [tasks[n]["tuned"] for n in names], width=0.4, label="tuned")
    for i, n in enumerate(names):
        top = max(tasks[n]["base"], tasks[n]["tuned"])
        ax.text(i, top + 1, f"{tasks[n]['change']:+.1f}", ha="center", color="#a40000" if tasks[n]["forgot"] else "#222")
    ax.set_xticks(list(x), names, rotation=20)
    ax.set_ylim(0, 110)  # room for the change labels above a full bar
    ax.set_ylabel("% correct")
    ax.legend()
    return _png(fig)


def _img(plots: dict, plot_id: str) -> str:
    data, missing = plots[plot_id]
    if data is None:
        return f"<p id='{plot_id}' class='note'>{html.escape(missing)}</p>"
    return f"<img id='{plot_id}' alt='{plot_id}' src='data:image/png;base64,{data}'>"


# ------------------------------------------------------------------ tables


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _header(report: dict) -> str:
    rows = [("run", report.get("run") or "-"), ("test data", report.get("data")), ("examples", report.get("n_examples")),
            ("base model", report.get("base_model")), ("created", report.get("created_at")),
            ("total seconds", _fmt(report.get("seconds"), 1))]
    return "<table>" + "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def _notes(report: dict) -> str:
    notes = report.get("notes") or []
    return "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in notes)


def _metric_names(report: dict) -> list[str]:
    """The table's metrics: the standard ones, then any other a strategy has (user metrics, preference accuracy)."""
    has = {m for row in (report.get("strategies") or {}).values() for m, v in row.items() if v is not None}
    return list(TABLE_METRICS) + [m for m in report.get("metrics", {}) if m not in TABLE_METRICS and m in has]


def _cell(row: dict, ci: dict | None, metric: str) -> str:
    """A metric's value and, under it, its difference from base with the 95% interval."""
    extra = f"<br><small>{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]</small>" if ci else ""
    return f"<td class='num'>{_fmt(row.get(metric))}{extra}</td>"


def _strategy_table(report: dict) -> str:
    strategies = report.get("strategies", {})
    intervals = report.get("intervals", {})
    metrics = _metric_names(report)
    head = "".join(f"<th>{m}</th>" for m in metrics) + "<th>s / example</th><th>tokens generated</th><th>stopped</th>"
    body = []
    for name, row in strategies.items():
        cells = [_cell(row, (intervals.get(name) or {}).get(m), m) for m in metrics]
        cells.append(f"<td class='num'>{_fmt(row.get('seconds_per_example'), 2)}</td>")
        cells.append(f"<td class='num'>{row.get('tokens_generated')}</td>")
        cells.append(f"<td class='num'>{_fmt(row.get('stopped_fraction'), 2)}</td>")
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    caption = ("<p class='note'>Under each number: the difference from base and its 95% paired bootstrap interval; "
               "an interval that excludes 0 is unlikely to be noise.</p>")
    errors = report.get("metric_errors") or {}
    err = "".join(f"<p class='warn'>{html.escape(s)} / {html.escape(m)}: the metric raised on {len(v)} example(s), "
                  f"first at line {v[0]['line']}: {html.escape(v[0]['error'])}</p>"
                  for s, ms in errors.items() for m, v in ms.items())
    return f"<table><tr><th>strategy</th>{head}</tr>{''.join(body)}</table>{caption}{err}"


def _clean_section(report: dict) -> str:
    """Each metric on all test examples and on those with no match in the training data, side by side."""
    clean = report.get("clean")
    if not clean:
        return ""
    n, metrics = report.get("n_examples"), _metric_names(report)
    left = clean["left_out"]
    title = (f"<h3>Without the {left} test example{'s' if left != 1 else ''} that {'have' if left != 1 else 'has'} "
             f"a match in the training data</h3>"
             f"<p class='note'>all: the {n} test examples; clean: the {clean['n_examples']} whose input has no exact "
             f"or near copy in the training data (beyond the context the files share), where the model's score "
             f"cannot come from having seen the question.</p>")
    if not clean["strategies"]:
        return title + "<p class='warn'>every test example has a match in the training data: no clean score</p>"
    head = "".join(f"<th colspan='2'>{m}</th>" for m in metrics)
    sub = "".join("<th>all</th><th>clean</th>" for _ in metrics)
    body = []
    for name, row in report.get("strategies", {}).items():
        own, ci = clean["strategies"].get(name, {}), (clean.get("intervals") or {}).get(name) or {}
        cells = "".join(f"<td class='num'>{_fmt(row.get(m))}</td>{_cell(own, ci.get(m), m)}" for m in metrics)
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    table = (f"<table id='clean'><tr><th rowspan='2'>strategy</th>{head}</tr><tr>{sub}</tr>{''.join(body)}</table>"
             "<p class='note'>Under each clean number: its difference from base on the same clean examples.</p>")
    return title + table + _near_matches(report.get("overlap") or {})


def _near_matches(overlap: dict) -> str:
    rows = overlap.get("near_matches") or []
    if not rows:
        return ""
    body = "".join(f"<tr><td class='num'>{_fmt(r['line'])}</td><td class='num'>{_fmt(r['train_line'])}</td>"
                   f"<td class='num'>{r['input_similarity']:.2f}</td><td class='num'>{r['output_similarity']:.2f}</td>"
                   f"<td class='text'>{html.escape(r['shared'])}</td></tr>" for r in rows)
    more = overlap.get("near", 0) - len(rows)
    tail = f"<p class='note'>and {more} more (report.json has the counts)</p>" if more > 0 else ""
    return ("<table id='near-matches'><tr><th>test line</th><th>training line</th><th>inputs alike</th>"
            f"<th>answers alike</th><th>in common beyond the shared context</th></tr>{body}</table>{tail}")


def _forgetting_table(forgetting: dict) -> str:
    tasks = forgetting.get("tasks")
    if not tasks:
        return ""
    rows = "".join(
        f"<tr><th>{html.escape(n)}</th><td class='num'>{t['n']}</td><td class='num'>{t['base']:.1f}</td>"
        f"<td class='num'>{t['tuned']:.1f}</td><td class='num{' warn' if t['forgot'] else ''}'>{t['change']:+.1f}</td></tr>"
        for n, t in tasks.items())
    return (f"<table><tr><th>task</th><th>rows</th><th>base %</th><th>tuned %</th><th>change (points)</th></tr>{rows}</table>"
            f"<p class='note'>probe: {html.escape(str(forgetting.get('mode')))}; warning when a task drops by more than "
            f"{forgetting.get('threshold')} points.</p>")


def differing_examples(report: dict, k: int = EXAMPLES_SHOWN) -> tuple[str | None, list[dict]]:
    """(the strategy compared with base, the k examples whose ROUGE-L differs most between them)."""
    names = list(report.get("strategies", {}))
    other = "tuned" if "tuned" in names else next((n for n in names if n != "base"), None)
    if "base" not in names or other is None:
        return other, []
    scored = [(abs(e["scores"][other]["rouge_l"] - e["scores"]["base"]["rouge_l"]), i)
              for i, e in enumerate(report.get("examples", []))]
    return other, [report["examples"][i] for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))[:k]]


def _examples_table(report: dict) -> str:
    other, rows = differing_examples(report)
    if not rows:
        return "<p class='note'>needs base and another strategy</p>"
    body = "".join(
        f"<tr><td class='num'>{_fmt(e['line'])}</td><td class='text'>{html.escape(e['input'])}</td>"
        f"<td class='text'>{html.escape(e['reference'])}</td><td class='text'>{html.escape(e['answers']['base'])}</td>"
        f"<td class='text'>{html.escape(e['answers'][other])}</td>"
        f"<td class='num'>{e['scores'][other]['rouge_l'] - e['scores']['base']['rouge_l']:+.2f}</td></tr>"
        for e in rows)
    return (f"<table id='examples'><tr><th>line</th><th>input</th><th>reference</th><th>base answer</th>"
            f"<th>{html.escape(other)} answer</th><th>ROUGE-L change</th></tr>{body}</table>")


def _metric_help(report: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in report.get("metrics", {}).items())
    return f"<table>{rows}</table>"
