"""The benchmark script in --quick mode runs end to end: CI fails on a broken benchmark, never on a
missed goal (goals are judged on the full run docs/benchmarks.md shows). What is checked here is that every
row exists with a finite figure, that report rows make no pass claim, and that the cold-switch subject
really reads its section (a no-op benchmark would pass any goal)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_quick_benchmarks_run(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import ROW_IDS

    out = tmp_path / "bench.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(ROW_IDS)
    for r in rows.values():
        for k in ("value", "baseline_value", "ratio", "loramgr_min", "loramgr_max"):
            assert math.isfinite(r[k]), (r["id"], k)
        assert r["baseline_value"] > 0 and r["trials"] >= 1
        assert r["kind"] in ("goal", "report")
        assert ("pass" in r) == (r["kind"] == "goal") == ("goal_op" in r), r["id"]
        assert r["kind"] == "report" or math.isfinite(r["goal"])
    assert rows["int8_cosine"]["goal_op"] == ">=" and rows["register_copy"]["goal_op"] == "<="
    cold, first = rows["switch_cold"], rows["switch_cold_first_verify"]
    # every cold trial (and its warm-up) loaded its section into ORT; the benchmark asserts it per trial too
    assert cold["adapter_loads"] >= cold["trials"] + first["trials"]
    assert first["bytes_read_min"] >= first["section_bytes"] > 0  # and re-hashed it: read every byte
    assert cold["trials"] >= 3 and "ratio_min" in cold
    assert "| `switch_cold` |" in p.stdout


def test_interleave_alternates_and_pairs():
    sys.path.insert(0, str(ROOT))
    from benchmarks.measure import Row, interleave

    order: list[str] = []
    t = interleave(lambda: order.append("a"), lambda: order.append("b"), rounds=4, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then alternating sides
    assert len(t.baseline) == len(t.subject) == 4 and len(t.ratios) == 4
    goal = Row.timed("x", "x", "y", t, goal=2.0).to_json()
    report = Row.timed("x", "x", "y", t).to_json()
    assert "pass" in goal and "pass" not in report and report["kind"] == "report"
    assert goal["goal_op"] == "<=" and "goal_op" not in report
