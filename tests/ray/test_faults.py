"""Verifier plug-ins that raise or hang become error rows and metrics; the run completes."""

import pytest

from actors.launch import train
from rlpt.config import load_config
from rlpt.metrics import read_metrics
from rlpt.rollout_log import read_rollouts

pytestmark = pytest.mark.ray


def small(tiny_root, name, verifier, *extra):
    return load_config(None, [f"run.root={tiny_root}", f"run.name={name}", "run.steps=2", "rollout.prompts_per_step=4",
                              "rollout.samples_per_prompt=2", f"verifier.name={verifier}", "verifier.timeout_s=1.0",
                              "verifier.error_reward=-0.5", *extra])


def test_raising_verifier_gives_error_rows_and_run_completes(ray_cluster, tiny_root):
    cfg = small(tiny_root, "raises", "tests.ray.bad_verifiers:raises")
    train(cfg, tiny_root / "raises")
    rows = read_rollouts(tiny_root / "raises").to_pylist()
    assert len(rows) == 2 * 4 * 2
    assert all(r["error"].startswith("RuntimeError: verifier bug on") and r["reward"] == -0.5 for r in rows)
    metrics = read_metrics(tiny_root / "raises" / "metrics.jsonl")
    assert [m["verifier/errors"] for m in metrics] == [8.0, 8.0] and len(metrics) == 2


def test_hanging_verifier_times_out_per_rollout(ray_cluster, tiny_root):
    # answers are 0..8; arith prompts with answer 4 hang, the rest are scored
    cfg = small(tiny_root, "hangs", "tests.ray.bad_verifiers:hangs_on_some", "data.arith.num_prompts=64")
    train(cfg, tiny_root / "hangs")
    rows = read_rollouts(tiny_root / "hangs").to_pylist()
    hung = [r for r in rows if r["answer"] == "4"]
    fine = [r for r in rows if r["answer"] != "4"]
    assert fine and all(r["error"] is None for r in fine)
    assert all(r["error"].startswith("timeout") and r["reward"] == -0.5 for r in hung)
    metrics = read_metrics(tiny_root / "hangs" / "metrics.jsonl")
    assert sum(m["verifier/errors"] for m in metrics) == len(hung)
