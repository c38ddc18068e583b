"""The readiness verdict names every reason that applies, not only the first (issue 12)."""

from __future__ import annotations

import json

from tunesmith.data.check import check


def test_a_small_file_with_many_errors_is_told_both(tmp_path):
    rows = [{"input": f"question {i} about permits", "output": f"answer {i}: {i * 37} units"} for i in range(34)]
    rows += [{"input": f"broken {i}"} for i in range(6)]  # 15% of the rows have errors
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    v = check(path).summary["verdict"]
    assert v["level"] == "fix-data"  # the most pressing one decides the level
    assert "fix the data first" in v["message"] and "too little data" in v["message"]
    assert [p["level"] for p in v["problems"]] == ["fix-data", "too-little"]


def test_enough_clean_data_has_one_verdict(tmp_path):
    rows = [{"input": f"question {i} about permits", "output": f"answer {i}: {i * 37} units"} for i in range(150)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    v = check(path).summary["verdict"]
    assert v["level"] == "enough-to-start" and [p["level"] for p in v["problems"]] == ["enough-to-start"]
