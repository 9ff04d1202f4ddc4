"""Evaluation figures at fixed sampling (training's `run.eval_every` and `rlpt eval` compute the same ones).

- greedy pass@1: the share of prompts whose greedy (temperature 0) completion is correct;
- pass@k from n samples per prompt, the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
  Trained on Code", arXiv 2107.03374, eq. 1): with c correct of n, pass@k = 1 - C(n - c, k) / C(n, k), averaged
  over prompts; computed as 1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms a large binomial;
- mean@n: the mean correctness of the n samples (pass@1 estimated from n samples), and their mean reward.
A verifier that gives no correctness (only a reward) gets the reward figures only: unknown is not zero.
"""

from __future__ import annotations

from typing import Sequence

from rlpt.types import ScoredRollout


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with c correct among n samples.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 2), pass_at_k(4, 3, 2)
    (0.25, 0.5, 0.0, 1.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n; got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def _groups(scored: Sequence[ScoredRollout], n: int) -> list[Sequence[ScoredRollout]]:
    if n < 1 or len(scored) % n:
        raise ValueError(f"evaluation: {len(scored)} samples are not whole groups of {n}")
    return [scored[i:i + n] for i in range(0, len(scored), n)]


def eval_metrics(greedy: Sequence[ScoredRollout], sampled: Sequence[ScoredRollout], n: int,
                 ks: Sequence[int]) -> dict[str, float]:
    """`eval/*` figures: `greedy` has one completion per prompt, `sampled` n per prompt (in prompt order; empty
    when n = 0)."""
    out: dict[str, float] = {"eval/prompts": float(len(greedy))}
    every = [*greedy, *sampled]
    out["eval/errors"] = float(sum(s.error is not None for s in every))
    if greedy:
        out["eval/greedy_reward_mean"] = sum(s.reward for s in greedy) / len(greedy)
        if all(s.correct is not None for s in greedy):
            out["eval/greedy_pass@1"] = sum(bool(s.correct) for s in greedy) / len(greedy)
    if sampled:
        groups = _groups(sampled, n)
        out[f"eval/reward_mean@{n}"] = sum(s.reward for s in sampled) / len(sampled)
        if all(s.correct is not None for s in sampled):
            correct = [sum(bool(s.correct) for s in g) for g in groups]
            out[f"eval/mean@{n}"] = sum(correct) / len(sampled)
            for k in ks:
                out[f"eval/pass@{k}"] = sum(pass_at_k(n, c, k) for c in correct) / len(groups)
    return out
