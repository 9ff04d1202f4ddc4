"""Smoke run of benchmarks/startup.py: one real one-step `rlpt train` of the vs_trl tiny workload (hf engine, its own
local Ray cluster), timed from outside; the printed row must hold the run's events in order. The full benchmark
(before/after, both engines, 3 rounds) is not part of the test suite; its figures are in benchmarks/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray


def test_startup_benchmark_smoke(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "startup.py"), "--smoke", "--work", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    header = next(line for line in res.stdout.splitlines() if line.startswith("| code |"))
    row = next(line for line in res.stdout.splitlines() if line.startswith("| after | hf | 1 |"))
    names = [c.strip() for c in header.strip("|").split("|")][3:]
    got = dict(zip(names, (float(c) for c in row.strip("|").split("|")[3:])))
    assert 0 < got["until preflight done s"] < got["until actors up s"] < got["wall s"]
    assert 0 < got["of which Ray s"] < got["until actors up s"] and got["step s"] > 0 and got["shut down s"] > 0
    assert 0 <= got["exit after shut down s"] < got["wall s"]
    assert got["outside the step s"] == pytest.approx(got["wall s"] - got["step s"], abs=0.02)
    assert "wrote the section" not in res.stdout  # a smoke run leaves RESULTS.md alone
