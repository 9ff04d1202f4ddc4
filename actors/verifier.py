"""Scoring pools: M actors that each score a contiguous share of the rollouts, results back in input order.

The verifier pool's actors score rule verifiers in a killable child process (rlpt.isolation), so a verifier that
raises, hangs or dies yields an explicit error row, never a crash. Reward-model and judge pools (actors/reward_model.py,
actors/judge.py) are the same `ScorePool` over other actors: anything with `score_items(items) -> list[Verdict]`.

Only what a scorer reads crosses Ray: (prompt, completion) items go out, Verdicts come back, and the driver pairs
them with its own rollouts (their token ids and logprobs never travel).

Guarantees, for every kind of pool: every rollout gets exactly one verdict. An actor that dies is replaced (bounded
by `max_restarts`) and its share scored again by the replacement. An actor whose share is late (past
`timeout_of(len(share))`) is killed and replaced, and its share becomes explicit "timeout: ..." error rows (a judge
that hangs on an input would hang on it again: the rows are not re-scored); timeouts are counted, not bounded (a
hang is not a death: the run goes on). A replacement gets work only once it has started (answered a ping).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any, Callable, Sequence

from rlpt.errors import RunFault
from rlpt.isolation import IsolatedScorer, Loader, Verdict, VerifyItem, scored, verify_items
from rlpt.types import Rollout, ScoredRollout


class VerifierWorker:
    """Ray actor body (wrapped with ray.remote by actors/launch.py)."""

    def __init__(self, name: str, spec: str, timeout_s: float, error_reward: float, log_dir: str | None = None,
                 loader: Loader | None = None, kind: str = "verifier", item_cost: Callable[[Any], int] | None = None,
                 max_restarts: int = 32) -> None:
        from actors.logs import redirect_output

        redirect_output(log_dir, name)
        self.name = name
        self.scorer = IsolatedScorer(spec, timeout_s, error_reward, loader=loader, kind=kind, item_cost=item_cost,
                                     max_restarts=max_restarts)

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
                 error_reward: float, factory: Callable[[str], Any] | None = None, max_restarts: int = 3,
                 start_timeout_s: float = 600.0, shard_of: Callable[[Any], int] | None = None) -> None:
        self.workers, self.names = list(workers), list(names)
        self.shard_of = shard_of
        self.timeout_of, self.error_reward = timeout_of, error_reward
        self.factory, self.max_restarts, self.start_timeout_s = factory, max_restarts, start_timeout_s
        self.restarts = 0  # replacements of dead actors (bounded by max_restarts)
        self.timeouts = 0  # late shares (their actors replaced; not bounded: a hang is not a death)
        self._lock = threading.Lock()  # the counters below
        self._items, self._busy_s = 0, 0.0
        # One scoring call or resize at a time (the async loop's producer scores while the learner side rescales).
        self._calls = threading.Lock()
        self._joining: list[tuple[str, Any, Any]] = []  # (name, actor, its ping): started, not yet scoring
        self._started = len(self.workers)  # names of added actors continue the numbering

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
        with self._calls:
            self._admit()
            return self._score_items(items)

    def _score_items(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        import ray
        from ray.exceptions import RayActorError

        t0 = time.perf_counter()
        plan = self._plan(items)  # worker -> the positions of its share
        shares = {k: [items[i] for i in at] for k, at in plan.items()}
        out: dict[int, list[Verdict]] = {}
        timeout = self.timeout_of(max(len(share) for share in shares.values()))
        while len(out) < len(plan):
            todo = [k for k in plan if k not in out]
            refs = [self.workers[k].score_items.remote(shares[k]) for k in todo]
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
        placed: list[Verdict | None] = [None] * len(items)
        for k, at in plan.items():
            if len(out[k]) != len(at):
                raise RuntimeError(f"score: {self.names[k]} returned {len(out[k])} verdicts for {len(at)} items")
            for i, v in zip(at, out[k]):
                placed[i] = v
        verdicts = [v for v in placed if v is not None]
        if len(verdicts) != len(items):
            raise RuntimeError(f"score: {len(verdicts)} verdicts for {len(items)} items")
        with self._lock:
            self._items += len(items)
            self._busy_s += time.perf_counter() - t0
        return verdicts

    def _plan(self, items: Sequence[Any]) -> dict[int, list[int]]:
        """Which worker scores which items: contiguous equal shares, or with `shard_of` always the same worker for
        the same shard (the environment pool: a trajectory's next step goes where its environment is kept)."""
        W = len(self.workers)
        if self.shard_of is None:
            size = math.ceil(len(items) / W)
            return {k: list(range(i, min(i + size, len(items)))) for k, i in enumerate(range(0, len(items), size))}
        plan: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            plan.setdefault(self.shard_of(item) % W, []).append(i)
        return plan

    @property
    def size(self) -> int:
        """Actors scoring and actors starting."""
        return len(self.workers) + len(self._joining)

    def resize(self, n: int) -> None:
        """Start actors (they score from the first call after they answer a ping, so a slow start never makes a
        share late) or stop them (those still starting first), down to at least one."""
        import ray

        if self.factory is None:
            raise ValueError("a pool without a factory cannot grow")
        with self._calls:
            while self.size < n:
                name = f"{self.names[0].rsplit('-', 1)[0]}-{self._started}"
                actor = self.factory(name)
                self._joining.append((name, actor, actor.ping.remote()))
                self._started += 1
            while self.size > max(n, 1):
                if self._joining:
                    ray.kill(self._joining.pop()[1], no_restart=True)
                else:
                    ray.kill(self.workers.pop(), no_restart=True)
                    self.names.pop()

    def _admit(self) -> None:
        """Move the started actors that answered their ping into the pool (one that died starting is dropped)."""
        import ray
        from ray.exceptions import RayActorError

        for entry in list(self._joining):
            name, actor, ping = entry
            if not ray.wait([ping], timeout=0)[0]:
                continue
            self._joining.remove(entry)
            try:
                ray.get(ping)
            except RayActorError as e:
                print(f"[rlpt] {name} died while starting ({type(e).__name__}); not added", file=sys.stderr)
                continue
            self.workers.append(actor)
            self.names.append(name)

    def pending(self) -> list[Any]:
        """Actors still starting (for the caller to kill at shutdown)."""
        return [actor for _, actor, _ in self._joining]

    def take_throughput(self) -> tuple[int, float]:
        """(items scored, seconds spent scoring) since the last call."""
        with self._lock:
            got = self._items, self._busy_s
            self._items, self._busy_s = 0, 0.0
        return got

    def _replace(self, k: int, err: Exception, kill: bool) -> None:
        """A fresh actor in slot k, started before it gets work: a share sent to an actor still loading its model
        would wait behind the load and count it against the call's timeout. A late actor (`kill`) is killed first
        and counts as a timeout; a dead one counts against max_restarts."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if self.factory is None or (not kill and self.restarts >= self.max_restarts):
            raise VerifierWorkerLost(f"{self.names[k]} {'hung' if kill else 'died'} ({type(err).__name__}: {err}) and "
                                     f"may not be replaced (restarts so far {self.restarts}, "
                                     f"max_restarts={self.max_restarts})") from err
        if kill:
            ray.kill(self.workers[k], no_restart=True)
            self.timeouts += 1
        else:
            self.restarts += 1
        what = "timed out; its rows are timeout errors, replacing it" if kill else \
            f"died; replacing it and re-scoring its share (restart {self.restarts}/{self.max_restarts})"
        print(f"[rlpt] {self.names[k]} {what} ({type(err).__name__})", file=sys.stderr)
        self.workers[k] = self.factory(self.names[k])
        try:
            ray.get(self.workers[k].ping.remote(), timeout=self.start_timeout_s)
        except (RayActorError, GetTimeoutError) as e:
            raise VerifierWorkerLost(f"the replacement {self.names[k]} did not start within {self.start_timeout_s:.0f}s "
                                     f"({type(e).__name__}: {e})") from e


class PoolScaler:
    """Between steps: one ScorePool's size from the share of wall time it spent scoring since the last call
    (rlpt.autoscale.FleetPolicy, the rollout fleet's rule: band 0.1, a change at most every 3 steps)."""

    BAND, COOLDOWN_STEPS = 0.1, 3

    def __init__(self, pool: ScorePool, min_size: int, max_size: int, target_share: float) -> None:
        from rlpt.autoscale import FleetPolicy

        self.pool = pool
        self.policy = FleetPolicy(min_size, max_size, target_share, self.BAND, self.COOLDOWN_STEPS)
        self.calls, self.last_change = 0, None
        self.t = time.perf_counter()

    def update(self, busy_s: float) -> dict[str, float]:
        """Decide and resize; returns the pool's size and busy share for metrics."""
        now = time.perf_counter()
        share = busy_s / max(now - self.t, 1e-9)
        self.t = now
        decision = self.policy.decide(self.calls, share, self.pool.size, self.last_change)
        if decision.target != self.pool.size:
            print(f"[rlpt] {self.pool.names[0].rsplit('-', 1)[0]}: {self.pool.size} -> {decision.target} actors "
                  f"(scoring {share:.0%} of the last step; target {self.policy.target_share:.0%} +- {self.BAND:.0%})",
                  file=sys.stderr)
            self.pool.resize(decision.target)
            self.last_change = self.calls
        self.calls += 1
        return {"busy_share": share, "workers": float(len(self.pool.workers))}


class VerifierPool(ScorePool):
    """The rule-verifier pool: per-item timeouts inside the workers, an outer bound of timeout * share + slack (an
    actor past it is stuck, not the verifier: since the reward-term pools it gets timeout rows and is replaced,
    where it used to end the run)."""

    def __init__(self, workers: Sequence[Any], names: Sequence[str], per_item_timeout_s: float,
                 factory: Callable[[str], Any] | None = None, max_restarts: int = 3, slack_s: float = 60.0,
                 error_reward: float = 0.0, start_timeout_s: float = 600.0) -> None:
        super().__init__(workers, names, verifier_timeout_of(per_item_timeout_s, slack_s), error_reward, factory,
                         max_restarts, start_timeout_s)
