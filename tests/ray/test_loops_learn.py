"""NFT, RFT (online and rounds) and iterative DPO learn on real components: `rlpt train algorithm.name=X` on the
built-in default config (a bounded number of steps), each raising mean reward by >= 0.3 from its step-0 value
(tail mean: last 10 steps, or the last fifth of the rounds),
with the common metric keys plus their own and their data files."""

import json

import pyarrow.parquet as pq
import pytest

from actors.launch import train
from rlpt.algorithms import algorithm_of
from rlpt.config import load_config
from rlpt.metrics import read_metrics

pytestmark = pytest.mark.ray

COMMON = ["step", "policy_version", "reward/mean", "reward/correct_frac", "tokens/generated", "timing/rollout",
          "timing/verify", "timing/train", "timing/sync", "timing/step", "logprob_gap/mean"]

CASES = {
    "nft": (["algorithm.name=nft", "run.steps=120"], ["nft/neg_frac", "dynamic/kept_frac"]),
    # the two algorithms added through the extension point (one file + one dict entry each)
    "gspo": (["algorithm.name=gspo", "run.steps=120"], ["actor/clip_frac", "actor/ratio_mean"]),
    "rloo": (["algorithm.name=rloo", "run.steps=120"], ["actor/clip_frac", "actor/ratio_mean"]),
    "rft-online": (["algorithm.name=rft", "run.steps=150"], ["rft/kept"]),
    "rft-rounds": (["algorithm.name=rft", "algorithm.rft.mode=rounds"], ["rft/kept", "rft/samples"]),
    "dpo": (["algorithm.name=dpo"], ["dpo/pairs", "dpo/margin", "dpo/accuracy", "dpo/loss"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loop_learns_on_the_builtin_task(ray_cluster, tiny_root, case):
    overrides, own_keys = CASES[case]
    cfg = load_config(None, [f"run.root={tiny_root}", f"run.name={case}", *overrides])
    run_dir = tiny_root / case
    seconds = train(cfg, run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    rewards = [r["reward/mean"] for r in rows]
    k = max(2, min(10, len(rows) // 5))  # the tail: last 10 steps, or the last 2 of 10 rounds
    last = sum(rewards[-k:]) / k
    print(f"{case}: {len(rows)} steps in {seconds:.0f}s, reward {rewards[0]:.3f} -> last-{k} mean {last:.3f}; "
          f"curve {json.dumps({r['step']: round(r['reward/mean'], 3) for r in rows if r['step'] % 10 == 0})}")
    for r in rows:  # a round that found nothing to train on has no sync figures (sync/skipped)
        want = set(COMMON) - ({"logprob_gap/mean"} if r["sync/skipped"] else set())
        assert want <= set(r), want - set(r)
    assert any(set(own_keys) <= set(r) for r in rows)
    probed = [r for r in rows if "sync/probe_max_abs_diff" in r]  # the first sync, then every sync.probe_every-th
    assert probed and probed[0]["policy_version"] == 1 and not any(r["sync/skipped"] for r in probed)
    assert all(r["sync/probe_max_abs_diff"] < cfg.sync.probe_tolerance for r in probed)
    assert last >= rewards[0] + 0.3
    # the LR schedule's horizon is the optimizer steps the run really took (DeepSpeed's own step count)
    assert rows[-1]["learner/optimizer_steps"] == algorithm_of(cfg).lr_horizon(cfg)
    if case == "dpo":
        pairs = pq.read_table(run_dir / "pairs" / "round_000005.parquet")
        assert pairs.num_rows == rows[5]["dpo/pairs"] > 0
    if case == "rft-rounds":
        sft = pq.read_table(run_dir / "sft" / "round_000003.parquet")
        assert sft.num_rows == rows[3]["rft/kept"] > 0
        assert {"prompt", "completion", "answer"} <= set(sft.column_names)  # reusable as SFT data


@pytest.mark.parametrize("stage", [2, 3])
def test_rft_restart_from_base_rebuilds_the_learner(ray_cluster, tiny_root, stage):
    """`restart: base` on real DeepSpeed ranks: after training rounds, reset_to_base gives back the base weights."""
    from actors.launch import build_graph, prepare, shutdown
    from rlpt.loops import rft

    cfg = load_config(None, [f"run.root={tiny_root}", f"run.name=rft-base-z{stage}", "algorithm.name=rft",
                             "algorithm.rft.mode=rounds", "algorithm.rft.rounds=2", "algorithm.rft.prompts_per_round=32",
                             "algorithm.rft.epochs=1", "algorithm.rft.restart=base", "learner.num_ranks=2", "sync.probe_every=1",
                             f"learner.zero_stage={stage}", "learner.lr=1e-2"])
    prep = prepare(cfg, tiny_root / f"rft-base-z{stage}")
    graph = build_graph(cfg, prep)
    try:
        base = graph.workers.learner.checksums()
        rft.run(cfg, graph.workers, prep.prompts, tiny_root / f"rft-base-z{stage}", prep.tokenizer.pad_token_id)
        trained = graph.workers.learner.checksums()
        graph.workers.learner.reset_to_base()
        reset = graph.workers.learner.checksums()
    finally:
        shutdown(graph)
    assert trained != base and reset == base
    rows = read_metrics(tiny_root / f"rft-base-z{stage}" / "metrics.jsonl")
    assert len(rows) == 2 and all(r["sync/probe_max_abs_diff"] < cfg.sync.probe_tolerance for r in rows)


def test_a_decaying_lr_schedule_ends_where_the_run_does(ray_cluster, tiny_root):
    """GRPO with cosine: the horizon is the run's optimizer steps (main had 4x too many: the DPO/RFT epochs), so
    the LR reaches 0 at the last step; with 2 mini-batches and 2 PPO epochs, 4 optimizer steps per step."""
    cfg = load_config(None, [f"run.root={tiny_root}", "run.name=cosine", "run.steps=3", "learner.lr_schedule=cosine",
                             "learner.mini_batches=2", "learner.ppo_epochs=2", "algorithm.grpo.beta=0"])
    train(cfg, tiny_root / "cosine")
    rows = read_metrics(tiny_root / "cosine" / "metrics.jsonl")
    assert [r["learner/optimizer_steps"] for r in rows] == [4.0, 8.0, 12.0] and algorithm_of(cfg).lr_horizon(cfg) == 12
    lr = cfg.learner.lr
    assert [r["actor/lr"] for r in rows] == pytest.approx([lr * 0.75, lr * 0.25, 0.0], abs=1e-12)
