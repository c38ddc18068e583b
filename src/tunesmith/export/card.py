"""The model card (README.md) every export carries: base, data, method, evaluation, verification, use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.io import read_json_object
from tunesmith.runs.deliverable import Deliverable

USAGE = {
    "adapter": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{base}")  # or the local base folder named above
model = PeftModel.from_pretrained(base, "{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")  # carries the chat template used in training
```""",
    "merged": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{out}")
tokenizer = AutoTokenizer.from_pretrained("{out}")
ids = tokenizer.apply_chat_template([{{"role": "user", "content": "Hello"}}], add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:], skip_special_tokens=True))
```""",
    "gguf": """```bash
llama-cli -m {out}/{gguf} -cnv          # llama.cpp (the chat template is inside the file)
ollama create my-model -f {out}/Modelfile && ollama run my-model
```""",
}


LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf"}  # the Hub's library_name per format


def model_card(source: Deliverable, fmt: str, out: Path, verification: dict[str, Any], files: list[str]) -> str:
    """Markdown for README.md, opening with Hugging Face front matter; sections with nothing to say are left out."""
    from tunesmith.export.base import base_model

    base = base_model(source)
    parts = [front_matter(source, fmt, base), f"# {source.name} ({fmt} export)", "",
             f"Exported by tunesmith from {'run' if source.run_dir else 'model'} `{source.name}`.", ""]
    parts += _base(source, base) + _method(source) + _data(source) + _evaluation(source)
    parts += _verification(verification) + _files(files) + _usage(fmt, base, out, files) + _intended_use()
    return "\n".join(parts) + "\n"


def front_matter(source: Deliverable, fmt: str, base) -> str:
    """The `---` YAML block the Hub reads: base_model, library_name, license, tags, pipeline_tag."""
    import yaml

    tags = ["tunesmith", *([source.kind] if source.kind in ("lora", "full") else []), fmt]
    meta = {"base_model": base.name, "library_name": LIBRARY[fmt], "license": base.license, "tags": tags,
            "pipeline_tag": "text-generation"}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _base(source: Deliverable, base) -> list[str]:
    m = source.manifest
    rows = [f"- base model: `{base.name}` (license: {base.license})", f"- base weights (local): `{base.folder}`"]
    if base.sha256:
        rows.append(f"- base weights sha256: `{base.sha256}`")
    if m.get("chat_template_hash"):
        rows.append(f"- chat template hash: `{m['chat_template_hash']}` (the template is kept in this export"
                    + (", with the run's system prompt as its default)" if source.system else ")"))
    if source.system:
        rows.append(f"- system prompt (the chat template's default, as in training): {source.system!r}")
    return ["## Base model", "", *rows, ""]


def _method(source: Deliverable) -> list[str]:
    if not source.run_dir:
        return []
    m = source.manifest
    rows = [f"- method: {m.get('method', '?')}"]
    for key, value in (m.get("method_config") or {}).items():
        rows.append(f"  - {key}: {value}")
    train = _read_yaml(source.run_dir / "config.yaml").get("train") or {}
    chosen = m.get("resolved") or {}  # what `auto` chose for this run
    for key in ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "schedule", "warmup_ratio", "seed"):
        if f"train.{key}" in chosen:
            rows.append(f"- train.{key}: {chosen[f'train.{key}']['value']} (auto: {chosen[f'train.{key}']['reason']})")
        elif key in train:
            rows.append(f"- train.{key}: {train[key]}")
    for key in ("steps", "best_step", "best_val_loss", "data_fingerprint"):
        if m.get(key) is not None:
            rows.append(f"- {key}: {m[key]}")
    return ["## Fine-tuning", "", *rows, ""]


def _data(source: Deliverable) -> list[str]:
    card = read_json_object(source.run_dir / "data" / "data_card.json") if source.run_dir else {}
    if not card:
        return []
    rows = [f"- {key}: {card[key]}" for key in ("format", "rows_read", "kept", "rejected", "splits", "fingerprint")
            if key in card]
    return ["## Data", "", *rows, ""]


def _evaluation(source: Deliverable) -> list[str]:
    report = read_json_object(source.run_dir / "report.json") if source.run_dir else {}
    if not report:
        return ["## Evaluation", "", "No evaluation report yet: `tunesmith eval RUN` writes report.json.", ""]
    table = _metrics_table(report)
    body = table or ["```json", json.dumps(report, indent=2, default=str)[:3000], "```"]
    return ["## Evaluation", "", "From the run's report.json (held-out test split):", "", *body, ""]


def _metrics_table(report: dict) -> list[str]:
    """A table when report.json holds per-strategy metrics ({strategy: {metric: number}}), else nothing."""
    groups = report.get("strategies") or report.get("results") or {}
    if isinstance(groups, list):
        groups = {g.get("strategy") or g.get("name") or str(i): g for i, g in enumerate(groups) if isinstance(g, dict)}
    if not isinstance(groups, dict) or not groups:
        return []
    rows = {name: {k: v for k, v in (vals.get("metrics", vals) if isinstance(vals, dict) else {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)} for name, vals in groups.items()}
    metrics = sorted({k for r in rows.values() for k in r})
    if not metrics:
        return []
    lines = ["| strategy | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_num(r.get(k)) for k in metrics) + " |")
    return lines


def _num(v: Any) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _verification(v: dict[str, Any]) -> list[str]:
    rows = []
    for c in v.get("checks", []):
        if c.get("status") == "skipped":
            rows.append(f"- {c['loader']}: skipped ({c.get('reason')})")
            continue
        extra = f", teacher-forced top-1 {c['teacher_forced_top1']}" if "teacher_forced_top1" in c else ""
        what = f" `{c['file']}`" if c.get("file") else ""
        rows.append(f"- {c['loader']}{what}: {c['status']}, {c['exact_matches']}/{c['prompts']} greedy answers "
                    f"identical, token agreement {c['token_agreement']}{extra}")
    return ["## Verification", "", f"Reloaded and compared with the tuned model in memory on {v.get('n_prompts')} "
            f"prompts ({v.get('max_new_tokens')} new tokens, greedy); details in verification.json.", "", *rows, ""]


def _files(files: list[str]) -> list[str]:
    return ["## Files", "", *[f"- `{f}`" for f in files], ""]


def _usage(fmt: str, base, out: Path, files: list[str]) -> list[str]:
    from tunesmith.export.ollama import preferred_gguf

    ggufs = [f for f in files if f.endswith(".gguf")]
    gguf = preferred_gguf(ggufs) if ggufs else "model.gguf"
    return ["## Use", "", USAGE[fmt].format(base=base.name, out=out, gguf=gguf), ""]


def _intended_use() -> list[str]:
    return ["## Intended use and limitations", "",
            "Made for the task in its training data, prompted through the same chat template. It inherits the "
            "base model's limitations and biases; check the evaluation above (and the forgetting probe in the "
            "run's report) before relying on it outside that task.", ""]


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}
