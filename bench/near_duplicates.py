"""How many rows each duplicate rule flags, and how many `data prepare` drops, on the FAQ and on shared-context data.

    .venv/bin/python bench/near_duplicates.py                      # the FAQ and the shared-schema fixture
    .venv/bin/python bench/near_duplicates.py --rag FAQ_EN_JSONL    # also the FAQ as RAG-style rows

FAQ_EN_JSONL is `zaragoza_construction_faq/data/faq-en.jsonl` from the PyPI package
`zaragoza-construction-faq` (CC-BY-4.0; `pip download --no-deps zaragoza-construction-faq`, then
unzip): the same 503 English rows as examples/support-faq/faq.jsonl, with a category for each.
The RAG-style rows put in each input what a retrieval pipeline would: one instruction block
shared by every row, then a reference document shared by the rows of one category (39
categories of 7 to 30 rows: subsets of the file, like the databases of a text-to-SQL set), then
the question. The answers are the FAQ's. Nothing in the rows is a copy of another row, so every
near-duplicate finding on them is a false one.

Written to use only `check` and `prepare` (with `near_duplicates` given), so the same script
measures an older checkout of the code too: `PYTHONPATH=OLD/src python bench/near_duplicates.py ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = ("You are the customer support assistant of a Swedish construction company. Answer the customer's "
               "question in English, in two to four sentences, using only the reference material below. Cite the "
               "law or the authority where the material names one, give figures in SEK, and say so plainly when "
               "the material does not answer the question instead of guessing.")
DOC_ROWS = 3  # answers of a category that make its reference document


def rag_rows(source: Path) -> list[dict]:
    """The FAQ's rows as RAG-style input-output rows: instruction + the category's document + the question."""
    faq = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_category: dict[str, list[dict]] = defaultdict(list)
    for row in faq:
        by_category[row["category"]].append(row)
    docs = {c: " ".join(r["a"] for r in rows[:DOC_ROWS]) for c, rows in by_category.items()}
    return [{"input": f"{INSTRUCTION}\n\nReference material ({r['category']}):\n{docs[r['category']]}\n\n"
                      f"Question: {r['q']}", "output": r["a"]} for r in faq]


def measure(path: Path) -> dict:
    """Findings per duplicate rule (data check) and rows dropped per reason (data prepare, both modes)."""
    from tunesmith.data.check import check
    from tunesmith.data.prepare import prepare

    summary = check(path).summary
    found = {rule: v["count"] for rule, v in summary["by_rule"].items() if rule.startswith("dup.")}
    dropped = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("keep", "drop"):
            card = prepare(path, Path(tmp) / mode, near_duplicates=mode)
            dropped[mode] = {k: v for k, v in card["rejected_by_reason"].items() if k.startswith("dup.")}
    return {"rows": summary["rows_read"], "check": found, "prepare keep": dropped["keep"],
            "prepare drop": dropped["drop"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rag", type=Path, help="faq-en.jsonl of zaragoza-construction-faq, for the RAG-style rows")
    args = parser.parse_args()
    if not os.environ.get("PYTHONPATH"):  # PYTHONPATH=OLD/src measures another checkout
        sys.path.insert(0, str(ROOT / "src"))
    files = {"support-faq": ROOT / "examples" / "support-faq" / "faq.jsonl",
             "shared-schema fixture": ROOT / "tests" / "assets" / "shared-schema.jsonl"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.rag:
            path = Path(tmp) / "faq-rag.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rag_rows(args.rag)), encoding="utf-8")
            files["faq as RAG rows"] = path
        for name, path in files.items():
            m = measure(path)
            print(f"{name} ({m['rows']} rows): check {m['check'] or '{}'}; prepare drops, keep mode "
                  f"{m['prepare keep'] or '{}'}, drop mode {m['prepare drop'] or '{}'}")


if __name__ == "__main__":
    main()
