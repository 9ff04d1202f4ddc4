"""Verifier pool: M CPU actors, each scoring its share of the rollouts in a killable child process
(rlpt.isolation), so a verifier that raises, hangs or dies yields an explicit error row, never a crash."""

from __future__ import annotations

import math
from typing import Any, Sequence

from rlpt.isolation import IsolatedScorer
from rlpt.types import Rollout, ScoredRollout


class VerifierWorker:
    """Ray actor body (wrapped with ray.remote by actors/launch.py)."""

    def __init__(self, name: str, spec: str, timeout_s: float, error_reward: float) -> None:
        self.name = name
        self.scorer = IsolatedScorer(spec, timeout_s, error_reward)

    def ping(self) -> str:
        return self.name

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        return self.scorer.score(rollouts)


class VerifierTimeout(TimeoutError):
    pass


class VerifierPool:
    """Driver-side fan-out: contiguous shares, one per worker, results back in input order."""

    def __init__(self, workers: Sequence[Any], names: Sequence[str], per_item_timeout_s: float,
                 slack_s: float = 60.0) -> None:
        self.workers, self.names = list(workers), list(names)
        self.per_item_timeout_s, self.slack_s = per_item_timeout_s, slack_s

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        import ray

        if not rollouts:
            return []
        size = math.ceil(len(rollouts) / len(self.workers))
        shares = [list(rollouts[i:i + size]) for i in range(0, len(rollouts), size)]
        refs = [w.score.remote(s) for w, s in zip(self.workers, shares)]
        # Each item is bounded by the per-call timeout inside the worker; this outer bound catches a dead actor.
        timeout = self.per_item_timeout_s * size + self.slack_s
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            late = ", ".join(self.names[refs.index(r)] for r in pending)
            raise VerifierTimeout(f"verify: {late} did not return within {timeout:.0f}s")
        return [s for share in ray.get(refs) for s in share]
