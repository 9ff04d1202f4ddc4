"""The driver side of the weight sync: membership (`SyncMembership`) and the sync itself (`EngineSync`).

Membership: who is in the broadcast group, which generation of it is current, and how it changes.

The group is learner rank 0 + every rollout engine of the fleet (all TP workers of each) + the reference actor
when the algorithm's reference follows the policy (DPO `reference: previous`). It changes only between
collectives:

- `before_sync()`: the fleet updates (dead engines dropped, replacements and new capacity admitted, extras
  retired); when the member list changed, the group is re-formed as a new generation;
- `repair(send, receive)`: after a broadcast that failed, let the learner's side finish failing, close rank 0's end
  (members still blocked in the broken group then fail at once instead of at the backend timeout), replace the
  engines that died and re-form. It returns the engines lost; none lost means the failure was not an engine's
  (a learner rank, the reference) and the sync error stands.

Each generation has its own store and group name (`weights-<generation>`), so a member of an old generation can
never join a new one by mistake.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from actors.calls import ActorCallTimeout, ActorLost, first_line, gather, settle
from actors.fleet import Fleet
from actors.weight_sync import GroupSpec, SyncGroupError, resolve_backend
from rlpt.config import RlptConfig
from rlpt.errors import RunFault
from rlpt.types import SyncReport
from rlpt.weights import SyncPlan


class SyncMembership:
    def __init__(self, cfg: RlptConfig, rank0: Any, host: str, fleet: Fleet, reference: Any | None) -> None:
        """`reference` is the reference actor when it is a member (it follows the policy), else None."""
        self.cfg, self.rank0, self.host, self.fleet, self.reference = cfg, rank0, host, fleet, reference
        self.generation = 0
        self.transport = ""  # what the current generation's rank 0 chose: "shm" or "broadcast"
        self.join_timeout_s = cfg.sync.timeout_s + 30

    def members(self) -> tuple[list[Any], list[str]]:
        """Every receiving member (rank 1 ..) and its name, in rank order."""
        pool = self.fleet.pool
        extra = [self.reference] if self.reference is not None else []
        return [*pool.workers, *extra], [*pool.names, *(["reference"] if extra else [])]

    def form(self) -> None:
        """Form the group of the current generation: rank 0 opens a fresh store, every member joins."""
        import ray

        cfg = self.cfg
        port = ray.get(self.rank0.open_sync_group.remote(self.host), timeout=cfg.run.actor_timeout_s)
        actors, names = self.members()
        tp = cfg.rollout.tensor_parallel_size
        labels, bases, nxt = ["learner rank 0"], [], 1
        for actor, name in zip(actors, names):
            width = 1 if actor is self.reference else tp
            labels += [f"{name} (tp {t})" if width > 1 else name for t in range(width)]
            bases.append(nxt)
            nxt += width
        spec = GroupSpec(name=f"weights-{self.generation}", host=self.host, port=port,
                         backend=resolve_backend(cfg.sync.backend), timeout_s=cfg.sync.timeout_s, labels=tuple(labels),
                         transport=cfg.sync.transport)
        joins = [self.rank0.join_sync_group.remote(spec)] + [a.join_sync.remote(spec, b) for a, b in zip(actors, bases)]
        try:
            self.transport = gather("weight-sync group", joins, ["learner rank 0", *names], self.join_timeout_s)[0]
        except ActorCallTimeout as e:
            raise SyncGroupError(str(e)) from None

    def reform(self) -> None:
        self.generation += 1
        self.form()

    def before_sync(self) -> None:
        if self.fleet.update():  # engines left or joined: re-form with them, only ever between collectives
            self.reform()

    def repair(self, send: list[Any], receive: list[Any]) -> list[str]:
        """After a failed sync: the engines that died in it (replaced, group re-formed), or [] when none did."""
        import ray

        names_before = list(self.fleet.pool.names)
        if not settle(send, self.join_timeout_s):
            return []  # a learner rank died or hangs: not an engine fault (the sync error stands)
        ray.get(self.rank0.leave_sync_group.remote(), timeout=self.cfg.run.actor_timeout_s)
        settle(receive, self.join_timeout_s)  # their "connection closed" errors: expected, consumed here
        self.fleet.update(autoscale=False)  # drop the dead, admit replacements (blocks below cluster.rollout.min)
        lost = [name for name in names_before if name not in self.fleet.pool.names]
        if lost:
            self.reform()
        return lost


class SyncMismatchError(RunFault):
    """After a sync, an engine's probe logprobs differ from the learner's beyond the tolerance."""


class EngineSync:
    """Driver side of a sync (rlpt.loops.common.SyncService): start the learner's send and every member's receive
    together, wait with a deadline that names whoever is late, then probe members against the learner.

    Membership is read at each sync; `membership.before_sync()` runs first and is where dead engines are replaced
    and the group re-formed, so membership only ever changes between collectives.

    An engine that dies *inside* the broadcast fails it for everyone. Then `membership.repair(...)` replaces it and
    re-forms the group, and the sync runs again from the first bucket: every member ends with the whole new
    version, never a mix."""

    MAX_ATTEMPTS = 3  # per sync; each retry also costs a replacement engine (bounded by rollout.max_restarts)

    def __init__(self, learner: Any, membership: SyncMembership, plan: SyncPlan, probe_ids: Sequence[int],
                 tolerance: float, timeout_s: float, probe_every: int = 1) -> None:
        self.learner, self.membership = learner, membership
        self.plan, self.probe_ids, self.tolerance, self.timeout_s = plan, list(probe_ids), tolerance, timeout_s
        self.probe_every = probe_every
        self.probed_generation = -1  # the group generation whose members were last probed
        self.loading: tuple[list[Any], list[str], int] | None = None  # the last hand-off's loads (refs, names, v)

    def _wait(self, what: str, refs: list[Any], labels: list[str]) -> list[Any]:
        """A member that dies inside the broadcast fails the sync at once, naming it (its peers' collective would
        otherwise only end at the backend timeout); so does one that is late past `timeout_s`."""
        try:
            return gather(what, refs, labels, self.timeout_s)
        except (ActorCallTimeout, ActorLost) as e:
            raise SyncGroupError(str(e)) from None

    def probe_diff(self) -> float | None:
        """The largest |engine - learner| probe logprob over the live members (None if none is left). A member
        that dies during the probe is skipped, not fatal: the fleet drops and replaces it at the next boundary,
        like an engine that dies while generating."""
        import ray
        from ray.exceptions import RayActorError

        workers, names = self.membership.members()
        refs = [w.probe.remote(self.probe_ids) for w in workers]  # the members probe while the learner does
        want = self.learner.probe(self.probe_ids)
        done, late = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        if late:
            who = ", ".join(name for name, ref in zip(names, refs) if ref in late)
            raise SyncGroupError(f"sync probe: {who} did not finish within {self.timeout_s}s")
        worst: float | None = None
        for name, ref in zip(names, refs):
            try:
                lps = ray.get(ref)
            except RayActorError as e:
                print(f"[rlpt] {name} died during the sync probe ({first_line(e)}); the fleet replaces it at the "
                      f"next step boundary", file=sys.stderr)
                continue
            diff = max(abs(a - b) for a, b in zip(lps, want))
            if diff > self.tolerance:
                raise SyncMismatchError(f"after sync, {name} differs from the learner by {diff:.3g} in probe "
                                        f"logprobs (tolerance sync.probe_tolerance={self.tolerance})")
            worst = diff if worst is None else max(worst, diff)
        return worst

    def sync(self, version: int) -> SyncReport:
        """Send `version` and return once every member has loaded it (the synchronous loop)."""
        return self._sync(version, wait_for_members=True)

    def hand_off(self, version: int) -> SyncReport:
        """Send `version` and return once the learner's side is done, while the members still load it (the
        asynchronous loop: the learner goes on training instead of waiting for the engines' reload, which the
        engines do before their next round). Ray runs one caller's calls to an actor in the order they were made,
        so a member's next call (a generate, a probe, an evaluation) starts after its load. Whether the load
        succeeded is checked at the next sync (`settle`); until then a member whose load failed refuses to
        generate (RolloutWorker). The report's seconds are the learner's side.

        Only over shared memory (one node): there each member copies from rank 0's slot on its own, so one that
        dies cannot hold up another. Over broadcast (other nodes, NCCL) members pass each bucket along one
        collective, and a death inside it must be seen at once to repair the group: that waits as `sync` does."""
        return self._sync(version, wait_for_members=self.membership.transport != "shm")

    def settle(self) -> None:
        """Wait for the members' loads of the last hand-off. One that died in it is the fleet's to replace at this
        step boundary, like one that dies generating (if it answered a chunk since, the send fails and `repair`
        replaces it); one that failed otherwise, or is late past the timeout, fails the sync, named."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if self.loading is None:
            return
        (refs, names, version), self.loading = self.loading, None
        ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        for name, ref in zip(names, refs):
            try:
                ray.get(ref, timeout=0)
            except RayActorError as e:
                print(f"[rlpt] {name} died while loading weights v{version} ({first_line(e)}); the fleet replaces "
                      f"it", file=sys.stderr)
            except GetTimeoutError:
                raise SyncGroupError(f"weight sync v{version}: {name} did not finish loading within "
                                     f"{self.timeout_s}s") from None
            except Exception as e:  # noqa: BLE001 - the member's own error (a RayTaskError wraps it), named
                cause = getattr(e, "cause", None) or e
                raise SyncGroupError(f"weight sync v{version}: {name} failed to load: {type(cause).__name__}: "
                                     f"{first_line(cause)}") from e

    def _sync(self, version: int, wait_for_members: bool) -> SyncReport:
        self.settle()
        self.membership.before_sync()
        start, retries = time.perf_counter(), 0
        for attempt in range(1, self.MAX_ATTEMPTS + 1):
            workers, names = self.membership.members()
            defer = not wait_for_members and attempt == 1  # a retry after a repair waits: rare, and simpler
            send = self.learner.send_refs(version, confirm=not defer)
            recv = [w.receive_weights.remote(self.plan, version) for w in workers]
            labels = [f"learner rank {i}" for i in range(len(send))] + names
            try:
                if defer:
                    self._wait(f"weight sync v{version}", send, labels[:len(send)])
                    self.loading = (recv, names, version)
                else:
                    self._wait(f"weight sync v{version}", send + recv, labels)
                break
            except SyncGroupError as e:
                lost = self.membership.repair(send, recv) if attempt < self.MAX_ATTEMPTS else []
                if not lost:
                    raise
                retries += 1
                print(f"[rlpt] {', '.join(lost)} died during weight sync v{version} ({first_line(e)}); group "
                      f"re-formed without it, syncing v{version} again (attempt {attempt + 1})", file=sys.stderr)
        seconds = time.perf_counter() - start
        # The probe runs on the schedule (sync.probe_every), and always on a group's first sync: a member that
        # joined (a replacement, a new engine) is checked the first time it takes weights.
        generation = self.membership.generation
        due = generation != self.probed_generation or version % self.probe_every == 0
        self.probed_generation = generation
        return SyncReport(seconds=seconds, probe_max_abs_diff=self.probe_diff() if due else None, version=version,
                          retries=retries)
