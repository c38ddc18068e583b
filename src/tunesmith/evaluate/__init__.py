"""Evaluation: strategies side by side on held-out data, a forgetting probe, and an HTML report.

    from tunesmith.evaluate import compare, evaluate_run
    compare("test.jsonl", out="eval-out", strategies="base,prompt,rag", limit=50)
    evaluate_run("my-run")            # the run's test split; report.html lands in the run folder
"""

from __future__ import annotations

from tunesmith.evaluate.workflow import EvalResult, compare, compare_for_quickstart, evaluate_run

__all__ = ["EvalResult", "compare", "compare_for_quickstart", "evaluate_run"]
