"""Smoke run of benchmarks/multi_turn.py (2 rounds, the instant environment, waves 1 and 2 on one graph): both
settings sample whole rounds through the real actors and the rows carry the figures the table prints. The full
benchmark is not part of the test suite; its figures are in benchmarks/RESULTS.md with the exact command."""

import pytest

pytestmark = pytest.mark.ray


def test_multi_turn_benchmark_smoke(ray_cluster, tmp_path):
    from benchmarks.multi_turn import parse_args, run, table

    rows = run(parse_args(["--smoke", "--root", str(tmp_path)]))
    assert [(r["env"], r["waves"], r["rounds"], r["trajectories"]) for r in rows] == [("instant", 1, 2, 256),
                                                                                       ("instant", 2, 2, 256)]
    assert all(r["round"] > 0 and r["rollout"] > 0 and 0 < r["busy"] <= 1 for r in rows)
    assert rows[0]["vs_one"] == 1.0
    assert "| instant | 2 |" in table(rows)
