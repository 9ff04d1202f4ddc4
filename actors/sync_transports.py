"""The two ways bucket bytes travel from learner rank 0 to the members of a weight-sync group (actors.weight_sync
forms the group and picks one per generation through `TRANSPORTS`):

- `broadcast`: one broadcast per bucket over the group's process group (NCCL on GPU, gloo on CPU); members on other
  nodes, and GPUs, use it.
- `shm` (gloo, every member on rank 0's node): one shared-memory slot (actors.shm_slot); handshakes go through the
  group's store (tens of microseconds each, a gloo collective costs ~1 ms on 2 busy cores), and one gloo barrier per
  sync tells rank 0 at once that a member died.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Protocol

import torch
import torch.distributed as dist

from actors.calls import first_line
from actors.shm_slot import BufferPool
from rlpt.errors import RunFault
from rlpt.weights import SyncPlan, pack_parts

if TYPE_CHECKING:
    from actors.weight_sync import WeightGroup

Parts = Iterator[Mapping[str, torch.Tensor]]  # a bucket's named tensors, part by part (each valid until the next)


class SyncGroupError(RunFault):
    """A weight-sync collective failed or timed out; the message names the peer(s) and the phase."""


_POLL_S = (5e-5, 1e-3)  # first and longest sleep between store checks: sub-ms handshakes, no busy loop


def wait_keys(store: dist.Store, keys: list[str], timeout_s: float,
              broken: Callable[[], str | None] = lambda: None) -> tuple[list[str], str | None]:
    """Poll until every key exists, the deadline passes or `broken()` gives a reason to stop; return the keys
    still missing and that reason (a store that cannot be reached is one)."""
    deadline, delay = time.monotonic() + timeout_s, _POLL_S[0]
    while True:
        try:
            if not keys or store.check(keys):
                return [], None
            why = broken()
            if why is None and time.monotonic() <= deadline:
                time.sleep(delay)
                delay = min(2 * delay, _POLL_S[1])
                continue
            if why is not None:
                time.sleep(0.05)  # peers mid-handshake when the failure was seen are not blamed for it
            return [k for k in keys if not store.check([k])], why
        except Exception as e:  # noqa: BLE001 - the store's host is gone: every key is missing, say why
            return list(keys), f"the sync store is unreachable ({first_line(e)})"


class Transport(Protocol):
    """How bucket bytes get from rank 0 to the members (sender: begin, put per bucket, end; member: take per
    bucket, release it once loaded, confirm after loading). `take(borrow=True)` may hand out the transport's own
    memory (the shm slot) for a loader that copies every tensor out before asking for the next bucket; `release`
    gives it back."""

    def begin(self, plan: SyncPlan, version: int) -> None: ...
    def put(self, i: int, plan: SyncPlan, parts: Parts, version: int) -> None: ...
    def end(self, plan: SyncPlan, version: int) -> None: ...
    def take(self, i: int, plan: SyncPlan, version: int, borrow: bool = False) -> torch.Tensor: ...
    def release(self, i: int, version: int) -> None: ...
    def confirm(self, version: int) -> None: ...
    def close(self) -> None: ...


def _what(verb: str, i: int, plan: SyncPlan, version: int) -> str:
    return f"{verb} bucket {i + 1}/{len(plan.buckets)} of v{version}"


class BroadcastTransport:
    """One broadcast per bucket over the group's process group; each member loads into a fresh buffer (the loader
    may keep references), then writes `done/<version>/<rank>`, which rank 0 waits for. On CPU rank 0 packs into one
    staging buffer reused for every bucket (fresh pages cost more than the copy, and glibc kept each fresh buffer:
    measured 2-3 buckets of extra memory under ZeRO-3); on GPU the caching allocator already reuses memory."""

    def __init__(self, group: WeightGroup) -> None:
        self.g = group
        self.staging: torch.Tensor | None = None  # rank 0 on CPU: bytes of the largest bucket so far

    def _broadcast(self, flat: torch.Tensor, what: str) -> None:
        try:
            self.g.pg.broadcast([flat], dist.BroadcastOptions()).wait(timedelta(seconds=self.g.spec.timeout_s))
        except Exception as e:  # noqa: BLE001 - a raw gloo/NCCL error says nothing about who failed
            raise self.g.fail(what, e) from e

    def begin(self, plan: SyncPlan, version: int) -> None:
        pass

    def close(self) -> None:
        pass

    def _buffer(self, i: int, plan: SyncPlan) -> torch.Tensor:
        bucket = plan.buckets[i]
        if self.g.device.type != "cpu":
            return torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=self.g.device)
        if self.staging is None or self.staging.numel() < plan.max_bucket_bytes:
            self.staging = torch.empty(plan.max_bucket_bytes, dtype=torch.uint8)
        return self.staging[:bucket.nbytes].view(bucket.torch_dtype)

    def put(self, i: int, plan: SyncPlan, parts: Parts, version: int) -> None:
        bucket = plan.buckets[i]
        flat = self._buffer(i, plan)
        pack_parts(bucket, ({k: v.detach().to(self.g.device) for k, v in named.items()} for named in parts), flat)
        self._broadcast(flat, _what("sending", i, plan, version))

    def end(self, plan: SyncPlan, version: int) -> None:
        g = self.g
        missing, _ = wait_keys(g.store, [f"done/{version}/{r}" for r in g.members()], g.spec.timeout_s)
        if missing:
            who = ", ".join(g.spec.labels[int(k.split("/")[2])] for k in missing)
            raise SyncGroupError(f"weight-sync v{version}: {who} did not confirm loading within {g.spec.timeout_s}s")

    def take(self, i: int, plan: SyncPlan, version: int, borrow: bool = False) -> torch.Tensor:
        bucket = plan.buckets[i]
        flat = torch.empty(bucket.numel, dtype=bucket.torch_dtype, device=self.g.device)
        self._broadcast(flat, _what("receiving", i, plan, version))
        return flat

    def release(self, i: int, version: int) -> None:
        pass  # the member's own buffer: nothing to give back

    def confirm(self, version: int) -> None:
        self.g.store.set(f"done/{version}/{self.g.rank}", "1")


class ShmTransport:
    """Same-node members share rank 0's slot. Per bucket i of version v: rank 0 waits `freed/v/i-1/<r>` from every
    member, packs bucket i into the slot and sets `ready/v/i`; a member waits `ready/v/i`, copies the slot into a
    pooled private buffer, sets `freed/v/i/<rank>` and yields views of its copy (a borrowing member yields views of
    the slot itself and sets `freed/v/i/<rank>` only after loading bucket i, so rank 0 packs bucket i + 1 after every
    member has loaded bucket i). After loading, a member sets
    `loaded/v/<rank>`, which ends rank 0's send, and enters the sync's barrier, which rank 0 posted at `begin`:
    that barrier is how rank 0 learns at once that a member died (its connection closes) while it polls the store.
    Members learn that rank 0 died or left from the store, which rank 0 hosts."""

    def __init__(self, group: WeightGroup) -> None:
        assert group.slot is not None
        self.g, self.slot = group, group.slot
        self.pool = BufferPool(self.slot.nbytes)
        self.alive: dist.Work | None = None  # rank 0: this sync's barrier; it completes early only on failure

    def _barrier(self, timeout_s: float) -> dist.Work:
        opts = dist.BarrierOptions()
        opts.timeout = timedelta(seconds=timeout_s)
        return self.g.pg.barrier(opts)

    def _broken(self) -> str | None:
        if self.alive is None or not self.alive.is_completed():
            return None
        try:
            self.alive.wait()
        except Exception as e:  # noqa: BLE001 - gloo's error names an address, not a member: we name who is missing
            return f"a member left the group ({first_line(e)})"
        return None

    def _await(self, key: Callable[[int], str], what: str) -> None:
        g = self.g
        keys = {r: key(r) for r in g.members()}
        missing, why = wait_keys(g.store, list(keys.values()), g.spec.timeout_s, self._broken)
        if missing:
            who = ", ".join(g.spec.labels[r] for r, k in keys.items() if k in missing)
            raise SyncGroupError(f"weight-sync group {g.spec.name}: {who} did not {what} "
                                 + (f"within {g.spec.timeout_s}s" if why is None else f"({why})"))

    def begin(self, plan: SyncPlan, version: int) -> None:
        # Lateness is the store waits' business (timeout_s each); this barrier only has to outlive them all. It is
        # queued after the previous sync's, so it also fails if a member died since.
        self.alive = self._barrier(self.g.spec.timeout_s * (len(plan.buckets) + 2))

    def put(self, i: int, plan: SyncPlan, parts: Parts, version: int) -> None:
        if i > 0:  # members copy a bucket out right after it is ready: this wait is short
            self._await(lambda r: f"freed/{version}/{i - 1}/{r}", _what("release", i - 1, plan, version))
        try:
            out = self.slot.view(plan.buckets[i])
        except ValueError as e:
            raise SyncGroupError(f"weight-sync group {self.g.spec.name}: {e}") from e
        pack_parts(plan.buckets[i], parts, out)
        self.g.store.set(f"ready/{version}/{i}", "1")

    def end(self, plan: SyncPlan, version: int) -> None:
        self._await(lambda r: f"loaded/{version}/{r}", f"confirm loading v{version}")
        done = [f"ready/{version}/{i}" for i in range(len(plan.buckets))] + [f"loaded/{version}/{r}" for r in
                                                                            self.g.members()]
        done += [f"freed/{version}/{i}/{r}" for i in range(len(plan.buckets)) for r in self.g.members()]
        for key in done:  # nobody reads this sync's handshakes again: keep the store small over a long run
            self.g.store.delete_key(key)

    def _closed(self) -> str | None:
        return f"{self.g.spec.labels[0]} left the group" if self.g.store.check(["closed"]) else None

    def take(self, i: int, plan: SyncPlan, version: int, borrow: bool = False) -> torch.Tensor:
        """Bucket i: a copy in a pooled private buffer (the slot is released at once, so rank 0 packs the next
        bucket while this member loads), or with `borrow` the slot itself (no copy; released after loading)."""
        g, bucket = self.g, plan.buckets[i]
        missing, why = wait_keys(g.store, [f"ready/{version}/{i}"], g.spec.timeout_s, self._closed)
        if missing:  # rank 0 is late, left (closed the group) or died (its store is gone)
            raise SyncGroupError(f"weight-sync group {g.spec.name}: {g.spec.labels[0]} did not deliver bucket "
                                 f"{i + 1}/{len(plan.buckets)} of v{version} to {g.spec.labels[g.rank]} "
                                 + (f"within {g.spec.timeout_s}s" if why is None else f"({why})"))
        if borrow:
            return self.slot.view(bucket)
        flat = self.pool.take(bucket)
        flat.copy_(self.slot.view(bucket))
        self.release(i, version)
        return flat

    def release(self, i: int, version: int) -> None:
        self.g.store.set(f"freed/{version}/{i}/{self.g.rank}", "1")

    def confirm(self, version: int) -> None:
        self.g.store.set(f"loaded/{version}/{self.g.rank}", "1")
        self.alive = self._barrier(self.g.spec.timeout_s)  # completes rank 0's barrier once every member is in

    def close(self) -> None:
        """A process group cannot be destroyed while one of its collectives runs (the destructor joins it), and
        after a failed sync rank 0's barrier may still wait for a live but late member: let a thread hold the
        group until that barrier ends (the member enters it, leaves, or its timeout passes)."""
        if self.alive is not None and not self.alive.is_completed():
            threading.Thread(target=_release_after, args=(self.g.pg, self.alive), daemon=True).start()
        self.alive = None


def _release_after(pg: dist.ProcessGroup, work: dist.Work) -> None:
    try:
        work.wait()
    except Exception:  # noqa: BLE001 - the group is gone; only its end matters here
        pass
    del pg


TRANSPORTS: dict[str, Callable[[WeightGroup], Transport]] = {"broadcast": BroadcastTransport, "shm": ShmTransport}
