"""The elastic rollout fleet: which engines are in the RolloutPool, changed only between steps.

`Fleet.update()` runs right before each weight sync (the one point of a step where no collective is in flight and
no chunk is being generated). There it:

1. drops engines that died (process killed, node removed or preempted); their in-flight work was already re-issued
   by the pool during generation, so nothing is lost;
2. with `cluster.rollout.autoscale`, asks `rlpt.autoscale.FleetPolicy` for a fleet size from the measured share of
   step time spent waiting on rollouts, and tells the Ray autoscaler with `request_resources` (one engine bundle per
   wanted engine: the autoscaler adds nodes of the type that carries `cluster.engine_resources`, and removes idle
   ones after the size goes down);
3. starts engine actors up to the wanted size. They are *pending*: Ray schedules each one when capacity appears
   (a node joins) and its vLLM engine loads the base weights; until then it gets no work;
4. admits pending engines that are ready, and retires engines above the wanted size (newest first).

When membership changed, the caller re-forms the weight-sync group and the sync that follows sends the current
weights to every member, so a new engine serves only at the current `policy_version`.

Without autoscaling the wanted size is `max`: the fleet grows as capacity appears (a node added by hand or by
another autoscaler) and shrinks when nodes go away, never below `min` without waiting: with fewer than `min` live
engines the step blocks (up to `join_timeout_s`) until a replacement has joined. Replacements for dead engines are
bounded by `rollout.max_restarts`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from actors.placement import engine_bundle
from actors.rollout import RolloutPool, RolloutWorkerLost
from rlpt.autoscale import FleetPolicy
from rlpt.config import RlptConfig


@dataclass
class Pending:
    name: str
    actor: Any
    ready: Any  # ObjectRef of its ping(): resolves once the actor is scheduled and its engine is loaded
    since: float
    replaces_lost: bool


class Fleet:
    def __init__(self, cfg: RlptConfig, pool: RolloutPool, factory: Callable[[str], Any], timeout_s: float,
                 request: Callable[[list[dict[str, float]]], None] | None = None) -> None:
        f = cfg.cluster.rollout
        self.pool, self.factory, self.timeout_s = pool, factory, timeout_s
        self.min_size, self.max_size = cfg.fleet_bounds()
        self.join_timeout_s = f.join_timeout_s
        self.policy = (FleetPolicy(self.min_size, self.max_size, f.target_wait_share, f.band, f.cooldown_steps)
                       if f.autoscale else None)
        self.target = len(pool.workers) if f.autoscale else self.max_size
        self.bundle = engine_bundle(cfg)
        self.request = request if request is not None else _request_resources
        self.pending: list[Pending] = []
        self.next_id = len(pool.workers)
        self.updates, self.last_change = 0, None
        self.joined = self.left = self.join_timeouts = 0
        self.restarts, self.max_restarts = 0, cfg.rollout.max_restarts  # replacements for dead engines
        self.last_decision: tuple[int, float] = (0, 0.0)
        self.request([dict(self.bundle) for _ in range(self.target)])
        self._fill(replacing=0)

    # -------------------------------------------------------------------------------------------- the update
    def update(self, autoscale: bool = True) -> bool:
        """Between steps: returns True when the member list changed (the sync group must be re-formed).
        `autoscale=False` (a repair after a failed sync, inside a step) only replaces the dead."""
        changed = False
        lost = self._drop_dead()
        changed |= bool(lost)
        decision, share = self._autoscale() if autoscale else self.last_decision  # a repair keeps the step's
        self.last_decision = (decision, share)
        changed |= self._retire_extra()
        self._fill(replacing=lost)
        changed |= self._admit_ready(block=len(self.pool.workers) < self.min_size)
        self._expire_stale()
        self.updates += int(autoscale)  # the policy's clock counts steps, not repairs
        return changed

    def _drop_dead(self) -> int:
        dead = self.pool.check_alive(self.timeout_s)
        for w in sorted(dead, reverse=True):
            print(f"[rlpt] fleet: {self.pool.names[w]} left (dead or its node is gone)", file=sys.stderr)
        self.pool.remove(sorted(dead))
        self.left += len(dead)
        return len(dead)

    def _autoscale(self) -> tuple[int, float]:
        busy, span = self.pool.take_busy_seconds()
        share = busy / span if span > 0 else 0.0
        if self.policy is None:
            return 0, share
        size = len(self.pool.workers) + len(self.pending)
        d = self.policy.decide(self.updates, share, size, self.last_change)
        step = (d.target > self.target) - (d.target < self.target)
        if d.target != self.target:
            print(f"[rlpt] fleet: {self.target} -> {d.target} engines ({d.reason})", file=sys.stderr)
            self.target, self.last_change = d.target, self.updates
            self.request([dict(self.bundle) for _ in range(self.target)])
        return step, share

    def _retire_extra(self) -> bool:
        import ray

        while self.pending and len(self.pool.workers) + len(self.pending) > self.target:
            p = self.pending.pop()  # a request not served yet goes first
            ray.kill(p.actor, no_restart=True)
        changed = False
        while len(self.pool.workers) > max(self.target, self.min_size):
            actor, name = self.pool.workers[-1], self.pool.names[-1]
            self.pool.remove([len(self.pool.workers) - 1])
            ray.kill(actor, no_restart=True)
            self.left += 1
            changed = True
            print(f"[rlpt] fleet: retired {name}", file=sys.stderr)
        return changed

    def _fill(self, replacing: int) -> None:
        """Ask Ray for engines up to the wanted size; a replacement for a dead engine counts as a restart."""
        while len(self.pool.workers) + len(self.pending) < self.target:
            is_replacement = replacing > 0
            if is_replacement:
                if self.restarts >= self.max_restarts:
                    if len(self.pool.workers) + len(self.pending) < self.min_size:
                        raise RolloutWorkerLost(
                            f"rollout engines died and the pool may not replace them (restarts so far "
                            f"{self.restarts}, rollout.max_restarts={self.max_restarts}); "
                            f"{len(self.pool.workers)} live, cluster.rollout.min={self.min_size}")
                    return
                self.restarts += 1
                replacing -= 1
            name = f"rollout-{self.next_id}"
            self.next_id += 1
            actor = self.factory(name)
            self.pending.append(Pending(name, actor, actor.ping.remote(), time.monotonic(), is_replacement))

    def _admit_ready(self, block: bool) -> bool:
        """Move ready pending engines into the pool. With `block` (fewer than `min` live) wait for one."""
        import ray
        from ray.exceptions import RayActorError

        if not self.pending:
            if block and not self.pool.workers:
                raise RolloutWorkerLost("rollout: no engine is alive and none is starting")
            return False
        deadline = time.monotonic() + (self.join_timeout_s if block else 0.0)
        changed = False
        while True:
            refs = [p.ready for p in self.pending]
            wait_s = min(1.0, max(0.0, deadline - time.monotonic())) if block else 0.0
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
            for ref in ready:
                p = next(q for q in self.pending if q.ready is ref)
                self.pending.remove(p)
                try:
                    ray.get(ref)
                except RayActorError as e:
                    print(f"[rlpt] fleet: {p.name} failed to start ({type(e).__name__})", file=sys.stderr)
                    continue
                self.pool.add(p.actor, p.name)
                self.joined += 1
                changed = True
                print(f"[rlpt] fleet: {p.name} joined ({'replacement' if p.replaces_lost else 'new capacity'}; "
                      f"{len(self.pool.workers)} engines)", file=sys.stderr)
            if len(self.pool.workers) >= self.min_size or not block:
                return changed
            if time.monotonic() >= deadline or not self.pending:
                raise RolloutWorkerLost(
                    f"rollout: only {len(self.pool.workers)} engine(s) alive, cluster.rollout.min={self.min_size}, "
                    f"and no replacement joined within cluster.rollout.join_timeout_s={self.join_timeout_s}s "
                    f"(waiting for: {', '.join(p.name for p in self.pending) or 'nothing'}; engine resources "
                    f"{self.bundle}: does the cluster have room?)")

    def _expire_stale(self) -> None:
        """An autoscaler request that no capacity answered within join_timeout_s is withdrawn (the policy may ask
        again after its cool-down). Without autoscaling, pending engines simply wait for capacity."""
        import ray

        if self.policy is None:
            return
        now = time.monotonic()
        stale = [p for p in self.pending if now - p.since > self.join_timeout_s]
        for p in stale:
            self.pending.remove(p)
            ray.kill(p.actor, no_restart=True)
            self.join_timeouts += 1
            print(f"[rlpt] fleet: {p.name} found no capacity within {self.join_timeout_s}s; request withdrawn",
                  file=sys.stderr)
        if stale:
            self.target = max(self.min_size, len(self.pool.workers) + len(self.pending))
            self.request([dict(self.bundle) for _ in range(self.target)])

    def metrics(self) -> dict[str, float]:
        """The fleet's health as of its last update: size, pending engines, scaling, joins, departures, restarts."""
        decision, share = self.last_decision
        return {"faults/rollout_restarts": float(self.restarts),
                "fleet/size": float(len(self.pool.workers)), "fleet/pending": float(len(self.pending)),
                "fleet/target": float(self.target), "fleet/decision": float(decision),
                "fleet/wait_share": share, "fleet/joined": float(self.joined), "fleet/left": float(self.left),
                "fleet/join_timeouts": float(self.join_timeouts)}

    def shutdown(self) -> list[Any]:
        """Pending actors (for the caller to kill) and a withdrawn autoscaler request."""
        actors = [p.actor for p in self.pending]
        self.pending.clear()
        try:
            self.request([])
        except Exception:  # noqa: BLE001 - best effort at teardown (the cluster may already be gone)
            pass
        return actors


def _request_resources(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
