"""Scoring pools: M actors that each score a contiguous share of the rollouts, results back in input order.

The verifier pool's actors score rule verifiers in a killable child process (rlpt.isolation), so a verifier that
raises, hangs or dies yields an explicit error row, never a crash. Reward-model and judge pools (actors/reward_model.py,
actors/judge.py) are the same `ScorePool` over other actors: anything with `score_items(items) -> list[Verdict]`.

Only what a scorer reads crosses Ray: (prompt, completion) items go out, Verdicts come back, and the driver pairs
them with its own rollouts (their token ids and logprobs never travel).

Guarantees, for every kind of pool: every rollout gets exactly one verdict. An actor that dies is replaced (bounded
by `max_restarts`) and its share scored again by the replacement. An actor whose share is late (past
`timeout_of(len(share))`) is killed and replaced, and its share becomes explicit "timeout: ..." error rows (a judge
that hangs on an input would hang on it again: the rows are not re-scored).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any, Callable, Sequence

from rlpt.errors import RunFault
from rlpt.isolation import IsolatedScorer, Verdict, VerifyItem, scored, verify_items
from rlpt.types import Rollout, ScoredRollout


class VerifierWorker:
    """Ray actor body (wrapped with ray.remote by actors/launch.py)."""

    def __init__(self, name: str, spec: str, timeout_s: float, error_reward: float, log_dir: str | None = None
                 ) -> None:
        from actors.logs import redirect_output

        redirect_output(log_dir, name)
        self.name = name
        self.scorer = IsolatedScorer(spec, timeout_s, error_reward)

    def ping(self) -> str:
        return self.name

    def score_items(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        return self.scorer.score_items(items)


class VerifierWorkerLost(RunFault):
    """A scoring actor died or hung and its pool's max_restarts replacements are used up (or replacement is off)."""


def verifier_timeout_of(per_item_timeout_s: float, slack_s: float = 60.0) -> Callable[[int], float]:
    """A rule verifier's share: each item is bounded inside the worker (rlpt.isolation); this outer bound only
    catches a stuck actor."""
    return lambda n: per_item_timeout_s * n + slack_s


def batch_timeout_of(per_batch_timeout_s: float, batch_size: int) -> Callable[[int], float]:
    """A model pool's share: `per_batch_timeout_s` for each forward batch of it."""
    return lambda n: per_batch_timeout_s * math.ceil(n / batch_size)


class ScorePool:
    """Driver-side fan-out over scoring actors (see the module docstring for the guarantees)."""

    def __init__(self, workers: Sequence[Any], names: Sequence[str], timeout_of: Callable[[int], float],
                 error_reward: float, factory: Callable[[str], Any] | None = None, max_restarts: int = 3) -> None:
        self.workers, self.names = list(workers), list(names)
        self.timeout_of, self.error_reward = timeout_of, error_reward
        self.factory, self.max_restarts = factory, max_restarts
        self.restarts = 0
        self._lock = threading.Lock()  # the counters below; score_items itself is one call at a time per pool
        self._items, self._busy_s = 0, 0.0

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        if not rollouts:
            return []
        verdicts = self.score_items(verify_items(rollouts))
        if len(verdicts) != len(rollouts):  # the zip below must never drop or misalign a rollout
            raise RuntimeError(f"score: {len(verdicts)} verdicts for {len(rollouts)} rollouts")
        return [scored(r, v) for v, r in zip(verdicts, rollouts)]

    def score_items(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        import ray
        from ray.exceptions import RayActorError

        if not items:
            return []
        t0 = time.perf_counter()
        size = math.ceil(len(items) / len(self.workers))
        shares = [items[i:i + size] for i in range(0, len(items), size)]
        out: list[list[Verdict] | None] = [None] * len(shares)
        while any(o is None for o in out):
            todo = [k for k, o in enumerate(out) if o is None]
            refs = [self.workers[k].score_items.remote(shares[k]) for k in todo]
            timeout = self.timeout_of(size)
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            for k, ref in zip(todo, refs):
                if ref in pending:
                    out[k] = [(self.error_reward, None, {}, f"timeout: {self.names[k]} did not return within "
                               f"{timeout:.1f}s")] * len(shares[k])
                    self._replace(k, TimeoutError(f"late by more than {timeout:.1f}s"), kill=True)
                    continue
                try:
                    out[k] = ray.get(ref)
                except RayActorError as e:
                    self._replace(k, e, kill=False)
        verdicts = [v for share in out for v in share]  # type: ignore[union-attr]
        if len(verdicts) != len(items):
            raise RuntimeError(f"score: {len(verdicts)} verdicts for {len(items)} items")
        with self._lock:
            self._items += len(items)
            self._busy_s += time.perf_counter() - t0
        return verdicts

    def take_throughput(self) -> tuple[int, float]:
        """(items scored, seconds spent scoring) since the last call."""
        with self._lock:
            got = self._items, self._busy_s
            self._items, self._busy_s = 0, 0.0
        return got

    def _replace(self, k: int, err: Exception, kill: bool) -> None:
        import ray

        if self.factory is None or self.restarts >= self.max_restarts:
            raise VerifierWorkerLost(f"{self.names[k]} {'hung' if kill else 'died'} ({type(err).__name__}: {err}) and "
                                     f"may not be replaced (restarts so far {self.restarts}, "
                                     f"max_restarts={self.max_restarts})") from err
        if kill:
            ray.kill(self.workers[k], no_restart=True)
        self.workers[k] = self.factory(self.names[k])
        self.restarts += 1
        what = "timed out; replaced it (its rows are timeout errors)" if kill else \
            "died; replaced it and re-scoring its share"
        print(f"[rlpt] {self.names[k]} {what} ({type(err).__name__}, restart {self.restarts}/{self.max_restarts})",
              file=sys.stderr)


class VerifierPool(ScorePool):
    """The rule-verifier pool: per-item timeouts inside the workers, an outer bound of timeout * share + slack."""

    def __init__(self, workers: Sequence[Any], names: Sequence[str], per_item_timeout_s: float,
                 factory: Callable[[str], Any] | None = None, max_restarts: int = 3, slack_s: float = 60.0,
                 error_reward: float = 0.0) -> None:
        super().__init__(workers, names, verifier_timeout_of(per_item_timeout_s, slack_s), error_reward, factory,
                         max_restarts)
