"""Verifier pool: M CPU actors, each scoring its share of the rollouts in a killable child process
(rlpt.isolation), so a verifier that raises, hangs or dies yields an explicit error row, never a crash.

Only what a verifier reads crosses Ray: (prompt, completion) items go out, Verdicts come back, and the driver
pairs them with its own rollouts (their token ids and logprobs never travel)."""

from __future__ import annotations

import math
import sys
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


class VerifierTimeout(RunFault, TimeoutError):
    pass


class VerifierWorkerLost(RunFault):
    """A verifier actor died and verifier.max_restarts replacements are used up (or replacement is off)."""


class VerifierPool:
    """Driver-side fan-out: contiguous shares, one per worker, results back in input order. A worker that dies is
    replaced (bounded by `max_restarts`) and its share scored again by the replacement, so every rollout is scored
    exactly once."""

    def __init__(self, workers: Sequence[Any], names: Sequence[str], per_item_timeout_s: float,
                 factory: Callable[[str], Any] | None = None, max_restarts: int = 3, slack_s: float = 60.0) -> None:
        self.workers, self.names = list(workers), list(names)
        self.per_item_timeout_s, self.slack_s = per_item_timeout_s, slack_s
        self.factory, self.max_restarts = factory, max_restarts
        self.restarts = 0

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        import ray
        from ray.exceptions import RayActorError

        if not rollouts:
            return []
        items = verify_items(rollouts)
        size = math.ceil(len(items) / len(self.workers))
        shares = [items[i:i + size] for i in range(0, len(items), size)]
        out: list[list[Verdict] | None] = [None] * len(shares)
        while any(o is None for o in out):
            todo = [k for k, o in enumerate(out) if o is None]
            refs = [self.workers[k].score_items.remote(shares[k]) for k in todo]
            # Each item is bounded by the per-call timeout inside the worker; this outer bound catches a stuck actor.
            timeout = self.per_item_timeout_s * size + self.slack_s
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            if pending:
                late = ", ".join(self.names[todo[refs.index(r)]] for r in pending)
                raise VerifierTimeout(f"verify: {late} did not return within {timeout:.0f}s")
            for k, ref in zip(todo, refs):
                try:
                    out[k] = ray.get(ref)
                except RayActorError as e:
                    self._replace(k, e)
        verdicts = [v for share in out for v in share]  # type: ignore[union-attr]
        if len(verdicts) != len(rollouts):  # the zip below must never drop or misalign a rollout
            raise RuntimeError(f"verify: {len(verdicts)} verdicts for {len(rollouts)} rollouts")
        return [scored(r, v) for v, r in zip(verdicts, rollouts)]

    def _replace(self, k: int, err: Exception) -> None:
        if self.factory is None or self.restarts >= self.max_restarts:
            raise VerifierWorkerLost(f"{self.names[k]} died ({type(err).__name__}) and may not be replaced (restarts so far "
                               f"{self.restarts}, verifier.max_restarts={self.max_restarts})") from err
        self.workers[k] = self.factory(self.names[k])
        self.restarts += 1
        print(f"[rlpt] {self.names[k]} died ({type(err).__name__}); replaced it and re-scoring its share "
              f"(restart {self.restarts}/{self.max_restarts})", file=sys.stderr)
