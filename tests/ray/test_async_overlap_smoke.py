"""Smoke run of benchmarks/async_overlap.py (4 steps, the slow verifier, sync then async) on the session's Ray
cluster: both modes run end to end through the real actors with the learner and the engine pinned to different
cores, and the rows carry the figures the table prints. The full benchmark is not part of the test suite; its
figures are in benchmarks/RESULTS.md with the exact command."""

import pytest

pytestmark = pytest.mark.ray


def test_async_overlap_benchmark_smoke(ray_cluster, tmp_path):
    from benchmarks.async_overlap import parse_args, run, table

    rows = run(parse_args(["--smoke", "--root", str(tmp_path)]))
    assert [(r["verifier"], r["mode"], r["steps"]) for r in rows] == [("slow (+4 ms/sample)", "sync", 4),
                                                                      ("slow (+4 ms/sample)", "async K=1", 4)]
    assert [r["staleness_max"] for r in rows] == [0.0, 1.0]
    assert all(r["step"] > 0 and r["rollout"] > 0 and r["train"] > 0 and r["bound"] > 0 for r in rows)
    assert all(0 < r["cores_busy"] <= 1.05 for r in rows)  # CPU seconds over wall x cores (/proc tick rounding)
    assert rows[0]["vs_sync"] == 1.0
    assert "| slow (+4 ms/sample) | async K=1 |" in table(rows)
