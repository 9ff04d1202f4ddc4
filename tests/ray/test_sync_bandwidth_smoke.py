"""Smoke run of benchmarks/sync_bandwidth.py (tiny model, ZeRO-3, one sync per transport) on the session's Ray
cluster, into each rollout engine (the hf engine borrows the shm slot): the whole path runs through the real
actors, the engine ends equal to the learner, and the rows carry the figures the table prints. The full benchmark is not part of the test suite; its figures are in
benchmarks/RESULTS.md with the exact command."""

import pytest

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("engine", ["vllm", "hf"])
def test_sync_bandwidth_benchmark_smoke(ray_cluster, engine):
    from benchmarks.sync_bandwidth import parse_args, run, table

    rows = run(parse_args(["--smoke", "--engine", engine]))
    assert [(r["zero"], r["requested"], r["transport"]) for r in rows] == [(3, "broadcast", "broadcast"),
                                                                          (3, "shm", "shm")]
    assert all(r["probe_diff"] < 1e-4 for r in rows)  # the engine holds the learner's weights after the sync
    assert all(r["buckets"] > 3 and 0 < r["max_gathered_mb"] and r["gbps"] > 0 and r["memcpy_gbps"] > 0
               for r in rows)
    # shm into vLLM copies each bucket into pooled private buffers; the hf engine borrows the slot: none
    assert rows[0]["pool_buffers"] == 0 and (rows[1]["pool_buffers"] >= 1) == (engine == "vllm")
    assert "| shm |" in table(rows)
