"""Smoke runs of the benchmark scripts (a few rows / steps): they run end to end and print their tables. The full
benchmarks are not part of `make test`; their figures are in benchmarks/RESULTS.md with the exact command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_data_rows_benchmark_smoke(tmp_path):
    out = tmp_path / "RESULTS.md"
    res = subprocess.run([sys.executable, "benchmarks/data_rows.py", "--rows", "2000", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["format"] for r in rows] == ["parquet", "jsonl"] and all(r["rows"] == r["kept"] == 2000 for r in rows)
    assert all(r["last_answer"] == str(1999 % 97 + 1999 % 13) for r in rows)  # the regex answer of the last row
    assert "| parquet | 2000 |" in res.stdout and not out.exists()  # a smoke run leaves the committed figures alone


def _smoke(script, tmp_path):
    out = tmp_path / "RESULTS.md"
    res = subprocess.run([sys.executable, script, "--smoke", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not out.exists()  # a smoke run leaves the committed figures alone
    return res.stdout, [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def test_verify_overhead_benchmark_smoke(tmp_path):
    stdout, rows = _smoke("benchmarks/verify_overhead.py", tmp_path)
    assert [r["path"] for r in rows] == ["in-process", "IsolatedScorer"] and all(r["n"] == 128 for r in rows)
    assert all(r["median_s"] > 0 for r in rows) and rows[0]["overhead_ms"] == 0.0
    assert "| after | IsolatedScorer | 128 |" in stdout


def test_step_writes_benchmark_smoke(tmp_path):
    stdout, rows = _smoke("benchmarks/step_writes.py", tmp_path)
    assert len(rows) == 1 and rows[0]["steps"] == 5 and rows[0]["median_ms"] > 0
    assert "| after | end_step (rollouts file + metrics row) | 5 |" in stdout
