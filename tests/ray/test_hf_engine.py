"""`rollout.engine: hf` on real components (Ray actors, DeepSpeed learner, the weight-sync group): the default run
learns with it, every sync probe and every step's rollout-vs-learner logprob gap stay within tolerance, and a
model directory rlpt did not make (Qwen2.5 family, byte-level BPE, ChatML) samples with temperature, top-p and a
stop string through it (and through vLLM, for the stop string)."""

import json

import pytest
from transformers import AutoTokenizer

from actors.launch import train
from rlpt.config import load_config
from rlpt.metrics import read_metrics
from rlpt.rollout_log import read_rollouts

pytestmark = pytest.mark.ray


def test_default_run_learns_on_the_hf_engine(ray_cluster, tiny_root):
    cfg = load_config(None, [f"run.root={tiny_root}", "run.name=hf-engine", "rollout.engine=hf"])
    seconds = train(cfg, tiny_root / "hf-engine")
    rows = read_metrics(tiny_root / "hf-engine" / "metrics.jsonl")
    rewards = [r["reward/mean"] for r in rows]
    curve = {r["step"]: round(r["reward/mean"], 3) for r in rows if r["step"] % 25 == 0}
    print(f"hf engine: {seconds:.0f}s, reward every 25 steps: {json.dumps(curve)}; median rollout "
          f"{sorted(r['timing/rollout'] for r in rows)[len(rows) // 2] * 1000:.1f} ms, sync "
          f"{sorted(r['timing/sync'] for r in rows)[len(rows) // 2] * 1000:.1f} ms")
    assert len(rows) == cfg.run.steps
    assert rewards[0] <= 0.2
    assert sum(rewards[-10:]) / 10 >= 0.6, curve
    for r in rows:
        assert r["logprob_gap/max"] < cfg.sync.probe_tolerance, r["step"]
        assert r.get("sync/probe_max_abs_diff", 0.0) < cfg.sync.probe_tolerance, r["step"]
    assert [r["policy_version"] for r in rows] == list(range(1, cfg.run.steps + 1))


# vllm: it detokenizes only for stop strings (rlpt decodes the ids). Top-p 1 there: with T != 1 vLLM's logprobs are
# of the top-p-filtered distribution ("processed_logprobs"), the learner's of the unfiltered one (README, engines).
@pytest.mark.parametrize("engine, top_p", [("hf", 0.9), ("vllm", 1.0)])
def test_a_foreign_chatml_model_samples_with_top_p_temperature_and_a_stop_string(ray_cluster, tmp_path, engine, top_p):
    from tests.ray.families import chatml_arith_run

    cfg = load_config(None, [*chatml_arith_run(tmp_path), "run.name=qwen-hf",
                             f"rollout.engine={engine}", "rollout.temperature=0.7", f"rollout.top_p={top_p}",
                             "rollout.max_new_tokens=24", "rollout.stop=[e]", "rollout.prompts_per_step=4",
                             "rollout.samples_per_prompt=4", "algorithm.grpo.beta=0", "run.steps=4",
                             "sync.probe_every=1"])
    train(cfg, tmp_path / "qwen-hf")
    metrics = read_metrics(tmp_path / "qwen-hf" / "metrics.jsonl")
    assert len(metrics) == 4
    for r in metrics:  # the learner divides by T = 0.7 too: the engine's logprobs are of the same distribution
        assert r["logprob_gap/max"] < cfg.sync.probe_tolerance, r
        assert r["sync/probe_max_abs_diff"] < cfg.sync.probe_tolerance, r
    table = read_rollouts(tmp_path / "qwen-hf").to_pylist()
    assert len(table) == 4 * 16
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    longest = max(len(tok.decode([i])) for i in range(len(tok)))
    hits = [r["completion"] for r in table if r["finish_reason"] == "stop" and "e" in r["completion"]]
    assert hits, [r["completion"] for r in table]
    for r in table:  # a completion ends in the token that wrote the stop string (or at EOS, or at the budget)
        text = r["completion"]
        if r["finish_reason"] == "length":
            assert "e" not in text and r["num_tokens"] == 24, r
        elif "e" in text:
            assert text.index("e") >= len(text) - longest, r
