"""Smoke run of the side-by-side benchmark against TRL (benchmarks/vs_trl/): 3 steps of the tiny workload on each
system through the real harness (rlpt with `--rlpt-set rollout.engine=hf`) (assets, TRL's own venv via setup.sh, rlpt's CLI on a local Ray cluster, TRL's
GRPOTrainer), then the printed table must hold every expected row, with positive figures parsed from both runs.

A fresh clone builds the TRL venv here first (setup.sh, ~1.5 min cold; a second call returns at once).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks" / "vs_trl"))

from compare import rows_for  # noqa: E402

pytestmark = pytest.mark.ray


def parse_table(stdout: str) -> dict[str, tuple[float, float]]:
    """{row label: (rlpt, TRL)} from the markdown table compare.py prints ("not reached" reads as inf)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("figure (median)", "---"):
            continue
        rows[cells[0]] = tuple(math.inf if c == "not reached" else float(c) for c in cells[1:3])
    return rows


def test_vs_trl_smoke(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "benchmarks" / "vs_trl" / "compare.py"), "--workloads", "tiny",
           "--steps", "tiny=3", "--rounds", "1", "--out", str(tmp_path), "--rlpt-set", "rollout.engine=hf"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"compare.py failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    table = parse_table(res.stdout)
    labels = [r.label for r in rows_for("tiny", target=True)]
    assert list(table) == labels, res.stdout

    for label in labels:
        rlpt, trl = table[label]
        if "time to reward" in label:  # 3 steps rarely reach it: a time when reached, else "not reached"
            assert rlpt > 0 and trl > 0
        elif "sync" in label:  # TRL generates with the trained model itself: nothing to sync
            assert rlpt > 0 and trl == 0
        elif "other" in label:  # the step minus its phases: may round to 0, never clearly negative
            assert rlpt > -0.01 and trl > -0.01
        else:
            assert rlpt > 0 and trl > 0, f"{label}: rlpt {rlpt}, TRL {trl}"
    # rlpt ran with the extra override (the hf engine); both processes really ran their 3 steps.
    assert "engine: hf" in (tmp_path / "r0-tiny-rlpt" / "config.yaml").read_text()
    assert len((tmp_path / "r0-tiny-rlpt" / "metrics.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "r0-tiny-trl" / "steps.jsonl").read_text().splitlines()) == 3
