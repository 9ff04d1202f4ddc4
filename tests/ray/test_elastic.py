"""Elastic rollout fleet on a multi-node Ray cluster simulated on this machine (tests/ray/elastic_scenario.py, run
in a subprocess because it needs a cluster of its own): engines join when nodes appear, leave when nodes go, and
the autoscaling policy asks for more engines when the run is rollout-bound and fewer when they idle."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from rlpt.metrics import read_metrics
from rlpt.rollout_log import read_rollouts

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def run_scenario(name: str, out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # its own cluster, never the session's
    proc = subprocess.run([sys.executable, "-m", "tests.ray.elastic_scenario", name, str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    fleet_log = [line for line in proc.stderr.splitlines() if line.startswith("[rlpt]")]
    print("\n".join(fleet_log))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"summary": json.loads((out / "summary.json").read_text()), "log": fleet_log}


def assert_every_prompt_once(run_dir: Path, steps: int, P: int = 16, G: int = 16) -> list[dict]:
    table = read_rollouts(run_dir).to_pylist()
    for step in range(steps):
        here = [r for r in table if r["step"] == step]
        assert len(here) == P * G, f"step {step}: {len(here)} rollouts"
        assert Counter((r["prompt_uid"], r["sample_index"]) for r in here).most_common(1)[0][1] == 1
        assert all(r["error"] is None for r in here)
    return table


def test_nodes_join_and_leave_mid_run(tmp_path, ray_cluster, tiny_root):
    res = run_scenario("nodes", tmp_path)
    rows = read_metrics(tmp_path / "elastic" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(16))
    sizes = [int(r["fleet/size"]) for r in rows]
    print("fleet/size", sizes, "\nreward/mean", [round(r["reward/mean"], 3) for r in rows])
    joined_at = sizes.index(2)
    assert sizes[:3] == [1, 1, 1] and joined_at == 3  # node added after step 2, the engine joins at that boundary
    left_at = joined_at + sizes[joined_at:].index(1)
    # the node is removed from a thread as step joined_at + 4 starts; its engine's process outlives the raylet by a
    # varying while (seconds: a varying number of these short steps), so the scenario records the last finished
    # step when a call to the engine first failed. The run notices it during the step then running (work
    # re-issued, dropped at that step's boundary) or at the next one's; it never leaves before the removal began
    gone = next(e for e in res["summary"]["events"] if e["event"] == "engine_unreachable")["last_step_done"]
    assert joined_at + 4 <= left_at <= gone + 2, (left_at, gone, res["summary"]["events"])
    assert set(sizes[left_at:]) == {1}
    assert rows[-1]["fleet/joined"] == 1 and rows[-1]["fleet/left"] == 1
    assert rows[-1]["faults/rollout_restarts"] == 1 and rows[-1]["fleet/pending"] == 1  # replacement awaits capacity
    # on-policy throughout: every rollout came from the version the learner had (no stale engine ever served),
    # and every sync probe matched
    assert all(r["staleness/mean"] == 0.0 for r in rows)
    assert all(r["sync/probe_max_abs_diff"] < 1e-4 for r in rows)
    assert [r["policy_version"] for r in rows] == list(range(1, 17))
    table = assert_every_prompt_once(tmp_path / "elastic", 16)
    engines = [Counter(r["engine"] for r in table if r["step"] == s) for s in range(16)]
    assert set(engines[0]) == {"rollout-0"}
    # a row's fleet/size is the membership after that step's boundary: the new engine serves from the next step
    assert set(engines[joined_at]) == {"rollout-0"}
    assert set(engines[joined_at + 1]) == {"rollout-0", "rollout-1"}  # it took work at once
    assert set(engines[-1]) == {"rollout-1"}
    assert res["summary"]["live_engines"] == ["rollout-1"] and res["summary"]["live_versions"] == [16]
    assert any("re-issuing" in line or "left" in line for line in res["log"])
    # learning is not disturbed: sampling seeds are per request, not per engine, so the same run on a fixed
    # one-engine fleet samples, scores and trains exactly the same (same rewards every step, same final weights)
    from actors.launch import train
    from rlpt.config import load_config
    from tests.ray.test_resume import weights_hash

    # the same threads as the scenario (auto would give its multi-node cluster 1, this one-node cluster every core)
    fixed = load_config(None, [f"run.root={tiny_root}", "run.name=elastic-baseline", "run.steps=16",
                               "run.tensorboard=false", "cluster.threads_per_actor=1", "sync.probe_every=1"])
    train(fixed, tiny_root / "elastic-baseline")
    base = read_metrics(tiny_root / "elastic-baseline" / "metrics.jsonl")
    assert [r["reward/mean"] for r in rows] == [r["reward/mean"] for r in base]
    ck = "checkpoints/step_000016"
    assert weights_hash(tmp_path / "elastic" / ck) == weights_hash(tiny_root / "elastic-baseline" / ck)


def test_nodes_join_and_leave_mid_run_in_async_mode(tmp_path, ray_cluster, tiny_root):
    """The same node changes with rollout.max_staleness=1: the producer generates the next step while the learner
    trains; the fleet changes only in the sync (under the engines lock), never under a running round."""
    res = run_scenario("nodes_async", tmp_path)
    rows = read_metrics(tmp_path / "elastic-async" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(16))
    sizes = [int(r["fleet/size"]) for r in rows]
    print("fleet/size", sizes, "\nreward/mean", [round(r["reward/mean"], 3) for r in rows])
    assert sizes[:3] == [1, 1, 1] and 2 in sizes and sizes[-1] == 1
    assert rows[-1]["fleet/joined"] == 1 and rows[-1]["fleet/left"] == 1 and rows[-1]["faults/rollout_restarts"] == 1
    assert all(r["staleness/max"] <= 1 for r in rows)
    assert all(r["sync/probe_max_abs_diff"] < 1e-4 for r in rows)
    table = assert_every_prompt_once(tmp_path / "elastic-async", 16)
    served = [set(r["engine"] for r in table if r["step"] == s) for s in range(16)]
    assert {"rollout-0", "rollout-1"} in served and served[0] == {"rollout-0"} and served[-1] == {"rollout-1"}
    assert all(r["learner_version"] - r["policy_version"] <= 1 for r in table if r["trained"])
    assert res["summary"]["live_engines"] == ["rollout-1"]
    # Deterministic despite the fleet changes: a fixed one-engine async run trains exactly the same.
    from actors.launch import train
    from rlpt.config import load_config
    from tests.ray.test_resume import weights_hash

    fixed = load_config(None, [f"run.root={tiny_root}", "run.name=elastic-async-baseline", "run.steps=16",
                               "run.tensorboard=false", "cluster.threads_per_actor=1", "sync.probe_every=1",
                               "rollout.max_staleness=1"])
    train(fixed, tiny_root / "elastic-async-baseline")
    base = read_metrics(tiny_root / "elastic-async-baseline" / "metrics.jsonl")
    assert [r["reward/mean"] for r in rows] == [r["reward/mean"] for r in base]
    ck = "checkpoints/step_000016"
    assert weights_hash(tmp_path / "elastic-async" / ck) == weights_hash(tiny_root / "elastic-async-baseline" / ck)


def test_autoscaling_policy_scales_up_when_rollout_bound_and_down_when_idle(tmp_path):
    res = run_scenario("autoscale", tmp_path)
    up = read_metrics(tmp_path / "autoscale-up" / "metrics.jsonl")
    down = read_metrics(tmp_path / "autoscale-down" / "metrics.jsonl")
    print("up: wait_share", [round(r["fleet/wait_share"], 2) for r in up], "size", [r["fleet/size"] for r in up])
    print("down: wait_share", [round(r["fleet/wait_share"], 2) for r in down], "size",
          [r["fleet/size"] for r in down])
    s = res["summary"]
    # rollout-bound (waiting > 20% of the step): one more engine requested, a node added, the engine joined
    first_up = next(i for i, r in enumerate(up) if r["fleet/decision"] == 1)
    assert up[first_up]["fleet/wait_share"] > 0.20 and up[first_up]["fleet/target"] == 2
    assert 2 in s["up"]["requests"] and {"event": "node_added", "nodes": 2, "during_run": True} in s["up"]["log"]
    assert up[-1]["fleet/size"] == 2 and s["up"]["live_engines"] == ["rollout-0", "rollout-1"]
    assert all(r["fleet/target"] <= 2 for r in up)  # never past cluster.rollout.max
    assert_every_prompt_once(tmp_path / "autoscale-up", len(up))
    # idle (waiting < 85% of the step against a 90% target): one engine retired, the request lowered, and the
    # node it freed removed; never below cluster.rollout.min
    first_down = next(i for i, r in enumerate(down) if r["fleet/decision"] == -1)
    assert down[first_down]["fleet/wait_share"] < 0.85 and down[first_down]["fleet/size"] == 1
    assert all(r["fleet/size"] >= 1 for r in down) and down[-1]["fleet/size"] == 1
    requests = s["down"]["requests"]  # [2 (start), ..., 1 (retire), ..., 0 (run over: request withdrawn)]
    assert requests[0] == 2 and requests[-1] == 0 and 1 in requests
    assert {"event": "node_removed", "nodes": 1, "during_run": True} in s["down"]["log"]
    assert all(r["staleness/mean"] == 0.0 for r in up + down)
    assert_every_prompt_once(tmp_path / "autoscale-down", len(down))
