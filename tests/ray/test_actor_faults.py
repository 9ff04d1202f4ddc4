"""A rollout engine and a verifier actor are killed mid-run (ray.kill): the pools notice, replace them (the new
engine takes the current weights through a re-formed sync group before it serves), re-issue the lost work, and the
run completes with every prompt generated and scored exactly once."""

import threading
import time
from collections import Counter

import pytest

from actors.launch import build_graph, prepare, shutdown
from rlpt.config import load_config
from rlpt.loops import async_online, online
from rlpt.metrics import read_metrics
from rlpt.rollout_log import read_rollouts

pytestmark = pytest.mark.ray


LOOPS = {"sync": (online.run, 0), "async": (async_online.run, 1)}  # (loop, rollout.max_staleness)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_killed_engine_and_verifier_are_replaced_and_nothing_is_lost(ray_cluster, tiny_root, loop):
    """In the asynchronous loop the kill lands in the producer thread's generation of step 2 (and the verifier's
    streaming scoring of it) while the learner trains step 1."""
    run_dir = tiny_root / f"faults-kill-{loop}"
    P, G = 8, 4
    run_loop, K = LOOPS[loop]
    cfg = load_config(None, [f"run.root={tiny_root}", f"run.name=faults-kill-{loop}", "run.steps=6",
                             "rollout.num_workers=2", "sync.probe_every=1", "verifier.num_workers=2",
                             f"rollout.prompts_per_step={P}", f"rollout.samples_per_prompt={G}",
                             f"rollout.max_staleness={K}"])
    prep = prepare(cfg, run_dir)
    graph = build_graph(cfg, prep)
    pool, real_generate = graph.pool, graph.pool.generate
    victims = {"engine": graph.pool.workers[0], "verifier": graph.verifier_pool.workers[1]}
    calls = {"n": 0}

    def generate_with_kill(prompts, seeds, spec, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # step 2: kill during generation, from another thread
            threading.Thread(target=lambda: (time.sleep(0.02), ray_cluster.kill(victims["engine"]),
                                             ray_cluster.kill(victims["verifier"]))).start()
        return real_generate(prompts, seeds, spec, **kw)

    pool.generate = generate_with_kill
    try:
        run_loop(cfg, graph.workers, prep.prompts, run_dir, prep.tokenizer.pad_token_id)
        assert graph.pool.workers[0] is not victims["engine"]  # replaced
        assert graph.verifier_pool.workers[1] is not victims["verifier"]
        assert ray_cluster.get(graph.pool.workers[0].get_version.remote()) == 6  # the replacement is current
    finally:
        shutdown(graph)
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(6))
    assert rows[-1]["faults/rollout_restarts"] == 1 and rows[-1]["faults/verifier_restarts"] == 1
    assert all(r["sync/probe_max_abs_diff"] < cfg.sync.probe_tolerance for r in rows)
    assert [r["policy_version"] for r in rows] == [1, 2, 3, 4, 5, 6]
    table = read_rollouts(run_dir).to_pylist()
    for step in range(6):
        here = [r for r in table if r["step"] == step]
        assert len(here) == P * G  # nothing lost, nothing doubled
        per_prompt = Counter(r["prompt_uid"] for r in here)
        assert len(per_prompt) == P and set(per_prompt.values()) == {G}
        assert all(r["error"] is None for r in here)  # every rollout really scored
        assert Counter((r["prompt_uid"], r["sample_index"]) for r in here).most_common(1)[0][1] == 1


def test_learner_rank_death_stops_the_run_fast_and_the_checkpoint_resumes(ray_cluster, tiny_root):
    """ray.kill of learner rank 1 after step 2: step 3's train call fails at once (not after the 600 s actor or
    gloo timeout) with an error naming the rank and the checkpoint to resume from; resuming from it completes."""
    from actors.launch import run_on_graph, train
    from actors.learner import LearnerRankLost

    run_dir = tiny_root / "faults-learner"
    cfg = load_config(None, [f"run.root={tiny_root}", "run.name=faults-learner", "run.steps=6",
                             "run.checkpoint_every=2", "learner.num_ranks=2", "rollout.prompts_per_step=8"])
    prep = prepare(cfg, run_dir)
    graph = build_graph(cfg, prep)
    killed_at = {}

    def on_step(step, metrics):
        if step == 2:
            ray_cluster.kill(graph.learner_ranks[1])
            killed_at["t"] = time.monotonic()

    try:
        with pytest.raises(LearnerRankLost) as info:
            run_on_graph(cfg, graph, prep, run_dir, on_step)
        waited = time.monotonic() - killed_at["t"]
    finally:
        shutdown(graph)
    message = str(info.value)
    assert "learner rank 1 died" in message and "train_step" in message
    assert "checkpoints/step_000002" in message and f"--resume {run_dir}" in message
    assert waited < 60, f"the run noticed the dead rank only after {waited:.0f}s"
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    train(load_config(run_dir / "config.yaml", []), run_dir, resume=True)  # the checkpoint is valid
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(6)) and rows[-1]["policy_version"] == 6


def test_engine_dying_inside_the_weight_sync_is_replaced_and_the_version_sent_again(ray_cluster, tiny_root):
    """Engine 0 is killed while learner rank 0 is already broadcasting v3 (many small buckets): the sync fails for
    every member, the learner closes the broken group, a replacement starts, the group is re-formed and v3 is sent
    again from the first bucket. The run completes, every engine ends on the learner's weights, no prompt is lost,
    and the repair does not wait for the backend's collective timeout."""
    from ray.exceptions import RayActorError

    run_dir = tiny_root / "faults-sync"
    P, G = 8, 4
    cfg = load_config(None, [f"run.root={tiny_root}", "run.name=faults-sync", "run.steps=5", "rollout.num_workers=2", "sync.probe_every=1",
                             f"rollout.prompts_per_step={P}", f"rollout.samples_per_prompt={G}",
                             "sync.bucket_mb=0.05"])
    prep = prepare(cfg, run_dir)
    graph = build_graph(cfg, prep)
    learner, victim = graph.sync.learner, graph.pool.workers[0]
    real_send_refs = learner.send_refs

    def send_refs_then_kill(version, confirm=True):
        refs = real_send_refs(version, confirm)
        if version == 3 and victim in graph.pool.workers:  # rank 0 is inside the broadcast: kill a member
            ray_cluster.kill(victim)
            with pytest.raises(RayActorError):
                while True:
                    ray_cluster.get(victim.ping.remote())
        return refs

    learner.send_refs = send_refs_then_kill
    try:
        online.run(cfg, graph.workers, prep.prompts, run_dir, prep.tokenizer.pad_token_id)
        assert victim not in graph.pool.workers and len(graph.pool.workers) == 2
        assert [ray_cluster.get(w.get_version.remote()) for w in graph.pool.workers] == [5, 5]
    finally:
        shutdown(graph)
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(5))
    assert [r["sync/retries"] for r in rows] == [0, 0, 1, 0, 0]
    assert rows[-1]["faults/rollout_restarts"] == 1
    assert [r["policy_version"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["sync/probe_max_abs_diff"] < cfg.sync.probe_tolerance for r in rows)  # v3 arrived whole
    assert rows[2]["timing/sync"] < cfg.sync.timeout_s, "the repair waited for the collective timeout"
    print("timing/sync per step:", [round(r["timing/sync"], 2) for r in rows])
    table = read_rollouts(run_dir).to_pylist()
    for step in range(5):
        here = [r for r in table if r["step"] == step]
        assert len(here) == P * G and len({(r["prompt_uid"], r["sample_index"]) for r in here}) == P * G
