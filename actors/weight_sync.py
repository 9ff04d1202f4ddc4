"""Weight sync learner rank 0 -> rollout engines: one group per generation, two transports behind one code path.

- Rendezvous: learner rank 0 hosts a TCPStore on a free port; every member (rank 0 = learner, ranks 1.. = engine
  workers) writes `joined/<rank>`; rank 0 waits for all with a deadline and, on expiry, names the members that
  never joined. Members wait for `ready` the same way and name rank 0 if it never comes. Rank 0 decides the
  transport there and then (`ready` carries it); both sides also open a process group (`backend`: NCCL on GPU,
  gloo on CPU).
- Transports (`sync.transport`, selected by the explicit `TRANSPORTS` dict):
  `broadcast`: one broadcast per bucket over the process group, for members on other nodes and for NCCL;
  `shm` (gloo only): every member maps one shared-memory slot of rank 0 (actors.shm_slot). Rank 0 packs bucket i
  into the slot and says so through the store; members copy it into reusable private buffers, say so, and hand
  views of their copy to the engine's loader while rank 0 gathers and packs bucket i + 1. No byte crosses a socket.
  A loader that copies each tensor out at once (the hf engine) borrows the slot instead: no private copy, and the
  slot is released after loading.
  `auto` (default) is `shm` when the backend is gloo and every member could map the slot, else `broadcast`.
- Weights travel as flat per-dtype buckets (`rlpt.weights.plan_buckets`). Rank 0 asks for bucket i's tensors only
  when it sends bucket i, part by part (a ZeRO-3 learner gathers each part just then), and asks for every part of
  every bucket even after a failure, so the other learner ranks are never left inside a gather.
- Failures name the peer: a member that is late past `timeout_s` is named; so is one that dies (shm: a gloo
  barrier rank 0 posts at the start of each sync and members enter after loading fails at once when a peer's
  connection closes; broadcast: the broadcast itself fails). Closing rank 0's end (`close`, also on re-form) makes
  every member blocked in the group fail at once: its process group and store go away.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from actors.shm_slot import SharedSlot
from actors.sync_transports import TRANSPORTS, Parts, SyncGroupError, Transport, wait_keys
from rlpt.weights import SyncPlan, unpack

__all__ = ["GroupSpec", "SyncGroupError", "WeightGroup", "buffer_device", "host_store", "receive_into", "rejoin",
           "resolve_backend"]


@dataclass(frozen=True)
class GroupSpec:
    """Everything a member needs to join. `labels[rank]` names the actor behind each rank (for errors)."""

    name: str
    host: str
    port: int
    backend: str  # "gloo" | "nccl"
    timeout_s: float
    labels: tuple[str, ...]
    transport: str = "auto"  # requested: "auto" | "shm" | "broadcast" (rank 0 decides at the rendezvous)

    @property
    def world_size(self) -> int:
        return len(self.labels)


def resolve_backend(requested: str) -> str:
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return requested


def buffer_device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def host_store(host: str, timeout_s: float) -> dist.TCPStore:
    """Rank 0's store on a free port (`store.port`), created before the members are told where to connect."""
    return dist.TCPStore(host, 0, is_master=True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


class WeightGroup:
    """This process's membership of one weight-sync group. Rank 0 passes `slot_bytes` (its plan's largest bucket)
    to offer the shared-memory transport."""

    def __init__(self, spec: GroupSpec, rank: int, store: dist.Store | None = None, slot_bytes: int = 0) -> None:
        self.spec, self.rank = spec, rank
        self.slot: SharedSlot | None = None
        self.times: dict[str, float] = {}  # seconds per phase of the last send/receive (benchmarks, profiles)
        self.unconfirmed: tuple[SyncPlan, int] | None = None  # rank 0: sent with confirm=False, not yet settled
        timeout = timedelta(seconds=spec.timeout_s)
        if store is None:
            try:
                store = dist.TCPStore(spec.host, spec.port, is_master=False, timeout=timeout)
            except Exception as e:  # noqa: BLE001 - re-raised with the peer named
                raise SyncGroupError(f"{spec.labels[rank]}: cannot reach the sync store of {spec.labels[0]} at "
                                     f"{spec.host}:{spec.port} within {spec.timeout_s}s: {e}") from e
        self.store = dist.PrefixStore(spec.name, store)
        chosen = self._host_rendezvous(slot_bytes) if rank == 0 else self._member_rendezvous()
        if rank == 0:  # the process group may outlive close() (ShmTransport.close): it must not keep the store up
            store = dist.TCPStore(spec.host, spec.port, is_master=False, timeout=timeout)
        pg_store = dist.PrefixStore("pg", dist.PrefixStore(spec.name, store))
        if spec.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(pg_store, rank, spec.world_size, opts)
        else:
            self.pg = dist.ProcessGroupGloo(pg_store, rank, spec.world_size, timeout)
        self.device = buffer_device(spec.backend)
        self.transport_name = chosen
        self.transport: Transport = TRANSPORTS[chosen](self)

    # ----------------------------------------------------------------------------------------- rendezvous
    def _offer_slot(self, slot_bytes: int) -> SharedSlot | None:
        s = self.spec
        if s.transport == "broadcast" or (s.transport == "auto" and (s.backend != "gloo" or slot_bytes <= 0)):
            return None
        if s.backend != "gloo":
            raise SyncGroupError(f"weight-sync group {s.name}: sync.transport=shm needs the gloo backend (CPU); "
                                 f"with {s.backend} use sync.transport=broadcast (or auto)")
        slot = SharedSlot.create(slot_bytes) if slot_bytes > 0 else None
        if slot is None:
            raise SyncGroupError(f"weight-sync group {s.name}: sync.transport=shm but {s.labels[0]} has no shared "
                                 f"memory to offer (no /dev/shm, or no sync plan when it joined)")
        return slot

    def _host_rendezvous(self, slot_bytes: int) -> str:
        s = self.spec
        offer = self._offer_slot(slot_bytes)
        self.store.set("offer", offer.describe() if offer else "")
        self.store.set("joined/0", "1")
        try:
            missing, _ = wait_keys(self.store, [f"joined/{r}" for r in range(1, s.world_size)], s.timeout_s)
        finally:
            if offer is not None:
                offer.unlink()  # every member has mapped it by now, or never will: nothing stays in /dev/shm
        if missing:
            who = ", ".join(s.labels[int(k.split("/")[1])] for k in missing)
            raise SyncGroupError(f"weight-sync group {s.name}: {who} did not join within {s.timeout_s}s")
        cannot = [s.labels[r] for r in range(1, s.world_size) if self.store.get(f"joined/{r}") != b"shm"]
        chosen = "shm" if offer is not None and not cannot else "broadcast"
        if s.transport == "shm" and chosen != "shm":
            self.store.set("ready", "refused")
            raise SyncGroupError(f"weight-sync group {s.name}: sync.transport=shm but {', '.join(cannot)} cannot map "
                                 f"the shared memory of {s.labels[0]} (another node?); use sync.transport=auto")
        self.slot = offer if chosen == "shm" else None
        self.store.set("ready", chosen)
        return chosen

    def _member_rendezvous(self) -> str:
        s, me = self.spec, self.spec.labels[self.rank]
        late = f"weight-sync group {s.name}: {s.labels[0]} (rank 0) did not confirm the group within {s.timeout_s}s"
        if wait_keys(self.store, ["offer"], s.timeout_s)[0]:
            raise SyncGroupError(f"{late} (seen from {me})")
        offer = self.store.get("offer").decode()
        self.slot = SharedSlot.attach(offer) if offer else None
        self.store.set(f"joined/{self.rank}", "shm" if self.slot is not None else "tcp")
        if wait_keys(self.store, ["ready"], s.timeout_s)[0]:
            raise SyncGroupError(f"{late} (seen from {me})")
        chosen = self.store.get("ready").decode()
        if chosen not in TRANSPORTS:
            raise SyncGroupError(f"weight-sync group {s.name}: {s.labels[0]} refused the group (sync.transport=shm "
                                 f"and a member cannot map its shared memory; seen from {me})")
        if chosen != "shm":
            self.slot = None
        return chosen

    def close(self) -> None:
        """Leave the group. Rank 0 says so in the store and its process group closes, so members blocked in either
        fail at once instead of at the timeout."""
        if self.rank == 0:
            try:
                self.store.set("closed", "1")
            except Exception:  # noqa: BLE001 - a store that is already gone tells members the same
                pass
            if self.slot is not None:
                self.slot.unlink()  # already gone after a successful rendezvous; this covers a failed one
        if self.transport is not None:
            self.transport.close()
        self.transport, self.unconfirmed = None, None  # type: ignore[assignment]
        self.pg = self.store = self.slot = None  # type: ignore[assignment]

    def members(self) -> range:
        return range(1, self.spec.world_size)

    def fail(self, what: str, error: BaseException | str) -> SyncGroupError:
        return SyncGroupError(f"weight-sync group {self.spec.name}: {what} failed on {self.spec.labels[self.rank]} "
                              f"within {self.spec.timeout_s}s: {error}")

    # ---------------------------------------------------------------------------------------------- sender
    def send(self, plan: SyncPlan, version: int, parts: Callable[[int], Parts], confirm: bool = True) -> None:
        """Rank 0: send every bucket. `parts(i)` yields bucket i's named tensors in parts (a ZeRO-3 learner gathers
        each part when asked: a collective of every learner rank). Every part is asked for even after the transport
        failed, so the other learner ranks finish their gathers; then the failure is raised.

        `confirm=False` returns once the last bucket is handed over, while the members may still be loading it: the
        wait for their confirmation moves to the start of the next send (or `settle()`), before anything of the
        next version touches the transport's memory. A member that fails to load is then named by that next send."""
        self.times = {"gather": 0.0, "put": 0.0, "end": 0.0, "settle": 0.0}
        error: SyncGroupError | None = None
        try:
            self.settle()
            self.transport.begin(plan, version)
        except SyncGroupError as e:
            error = e
        except Exception as e:  # noqa: BLE001 - e.g. the store; the parts below must still be asked for
            error = self.fail(f"starting v{version}", e)
        for i in range(len(plan.buckets)):
            start, gathered = time.perf_counter(), self.times["gather"]
            bucket_parts = _timed(parts(i), self.times)
            if error is None:
                try:
                    self.transport.put(i, plan, bucket_parts, version)
                except SyncGroupError as e:
                    error = e
            for _ in bucket_parts:  # what the transport did not take: the other ranks' gathers wait for ours
                pass
            self.times["put"] += time.perf_counter() - start - (self.times["gather"] - gathered)
        if error is not None:
            raise error
        self.unconfirmed = (plan, version)
        if confirm:
            start = time.perf_counter()
            self._confirmed()
            self.times["end"] = time.perf_counter() - start

    def settle(self) -> None:
        """Rank 0: wait until every member confirmed loading the last version sent (no-op when it already did)."""
        start = time.perf_counter()
        try:
            self._confirmed()
        finally:
            self.times["settle"] = time.perf_counter() - start

    def _confirmed(self) -> None:
        if self.unconfirmed is not None:
            (plan, version), self.unconfirmed = self.unconfirmed, None
            self.transport.end(plan, version)

    # -------------------------------------------------------------------------------------------- receiver
    def receive(self, plan: SyncPlan, version: int, borrow: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """Members: yield (name, tensor) bucket by bucket as they arrive. Call `confirm(version)` after loading.
        `borrow`: the tensors may be views of the transport's memory, valid until the next one is asked for (for
        a loader that copies each tensor out at once; it saves the member's own copy of each bucket)."""
        self.times = {"take": 0.0}
        for i, bucket in enumerate(plan.buckets):
            start = time.perf_counter()
            flat = self.transport.take(i, plan, version, borrow)
            self.times["take"] += time.perf_counter() - start
            yield from unpack(bucket, flat)
            if borrow:
                self.transport.release(i, version)

    def confirm(self, version: int) -> None:
        self.transport.confirm(version)


def _timed(parts: Parts, times: dict[str, float]) -> Parts:
    """`parts`, adding the time spent producing them (gathering) to times["gather"]."""
    while True:
        start = time.perf_counter()
        part = next(parts, None)
        times["gather"] += time.perf_counter() - start
        if part is None:
            return
        yield part


def rejoin(old: WeightGroup | None, spec: GroupSpec, rank: int) -> WeightGroup:
    """An engine member's group for a new generation: the old one's process group and shared memory go first."""
    if old is not None:
        old.close()
    return WeightGroup(spec, rank)


def receive_into(group: WeightGroup, plan: SyncPlan, version: int,
                 load: Callable[[Iterable[tuple[str, torch.Tensor]]], None], borrow: bool = False) -> int:
    """Stream the weights of `version` into `load` (an engine's in-place reload) and confirm. Returns #tensors.
    `borrow`: `load` copies each tensor out before asking for the next (WeightGroup.receive)."""
    count = 0
    stream = group.receive(plan, version, borrow)
    start = time.perf_counter()

    def counted() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal count
        for item in stream:
            count += 1
            yield item

    load(counted())
    for _ in stream:  # the sender waits until every bucket was taken: drain what the loader left
        pass
    group.times["load"] = time.perf_counter() - start - group.times["take"]
    if count != plan.num_tensors:
        raise SyncGroupError(f"weight-sync v{version}: {group.spec.labels[group.rank]} loaded {count} of "
                             f"{plan.num_tensors} tensors (the engine's loader stopped early)")
    group.confirm(version)
    return count
