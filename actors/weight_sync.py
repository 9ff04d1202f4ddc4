"""Weight sync learner rank 0 -> rollout engines over one broadcast process group (NCCL on GPU, gloo on CPU).

One code path for both backends: `backend` picks the process-group class and the device of the flat buckets;
everything else (rendezvous, bucketing, timeouts, error naming) is shared.

- Rendezvous: learner rank 0 hosts a TCPStore on a free port; every member (rank 0 = learner, ranks 1.. = engine
  workers) writes `joined/<rank>`; rank 0 waits for all with a deadline and, on expiry, names the members that
  never joined. Members wait for `ready` the same way and name rank 0 if it never comes.
- Transfer: weights travel as flat per-dtype buckets (`rlpt.weights.plan_buckets`), one broadcast per bucket, each
  with a timeout. Receivers stream: a generator receives bucket i and yields views of its tensors, so the engine's
  loader consumes one bucket at a time (a fresh buffer per bucket: the loader may keep references).
- After a transfer each receiver writes `done/<version>/<rank>`; on a timeout, rank 0 names whoever is missing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from rlpt.errors import RunFault
from rlpt.weights import SyncPlan, pack, unpack


class SyncGroupError(RunFault):
    """A weight-sync collective failed or timed out; the message names the peer(s) and the phase."""


@dataclass(frozen=True)
class GroupSpec:
    """Everything a member needs to join. `labels[rank]` names the actor behind each rank (for errors)."""

    name: str
    host: str
    port: int
    backend: str  # "gloo" | "nccl"
    timeout_s: float
    labels: tuple[str, ...]

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


def _wait_keys(store: dist.Store, keys: list[str], timeout_s: float) -> list[str]:
    """Poll until every key exists or the deadline passes; return the keys still missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [k for k in keys if not store.check([k])]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.02)


class WeightGroup:
    """This process's membership of one weight-sync group."""

    def __init__(self, spec: GroupSpec, rank: int, store: dist.Store | None = None) -> None:
        self.spec, self.rank = spec, rank
        timeout = timedelta(seconds=spec.timeout_s)
        if store is None:
            try:
                store = dist.TCPStore(spec.host, spec.port, is_master=False, timeout=timeout)
            except Exception as e:  # noqa: BLE001 - re-raised with the peer named
                raise SyncGroupError(f"{spec.labels[rank]}: cannot reach the sync store of {spec.labels[0]} at "
                                     f"{spec.host}:{spec.port} within {spec.timeout_s}s: {e}") from e
        self.store = dist.PrefixStore(spec.name, store)
        self._rendezvous()
        pg_store = dist.PrefixStore("pg", self.store)
        if spec.backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(pg_store, rank, spec.world_size, opts)
        else:
            self.pg = dist.ProcessGroupGloo(pg_store, rank, spec.world_size, timeout)
        self.device = buffer_device(spec.backend)

    def _rendezvous(self) -> None:
        s = self.spec
        self.store.set(f"joined/{self.rank}", "1")
        if self.rank == 0:
            missing = _wait_keys(self.store, [f"joined/{r}" for r in range(s.world_size)], s.timeout_s)
            if missing:
                who = ", ".join(s.labels[int(k.split("/")[1])] for k in missing)
                raise SyncGroupError(f"weight-sync group {s.name}: {who} did not join within {s.timeout_s}s")
            self.store.set("ready", "1")
        elif _wait_keys(self.store, ["ready"], s.timeout_s):
            raise SyncGroupError(f"weight-sync group {s.name}: {s.labels[0]} (rank 0) did not confirm the group "
                                 f"within {s.timeout_s}s (seen from {s.labels[self.rank]})")

    def _broadcast(self, flat: torch.Tensor, what: str) -> None:
        try:
            self.pg.broadcast([flat], dist.BroadcastOptions()).wait(timedelta(seconds=self.spec.timeout_s))
        except Exception as e:  # noqa: BLE001 - a raw gloo/NCCL error says nothing about who failed
            raise SyncGroupError(f"weight-sync group {self.spec.name}: {what} failed on {self.spec.labels[self.rank]}"
                                 f" within {self.spec.timeout_s}s: {e}") from e

    # ---------------------------------------------------------------------------------------------- sender
    def send(self, plan: SyncPlan, version: int, tensors: Callable[[int], dict[str, torch.Tensor]]) -> None:
        """Rank 0: broadcast every bucket. `tensors(i)` returns bucket i's named tensors (gathered lazily, so a
        ZeRO-3 learner materialises one bucket at a time)."""
        for i, bucket in enumerate(plan.buckets):
            named = {k: v.detach().to(self.device) for k, v in tensors(i).items()}
            self._broadcast(pack(bucket, named), f"sending bucket {i + 1}/{len(plan.buckets)} of v{version}")
        missing = _wait_keys(self.store, [f"done/{version}/{r}" for r in range(1, self.spec.world_size)],
                             self.spec.timeout_s)
        if missing:
            who = ", ".join(self.spec.labels[int(k.split("/")[2])] for k in missing)
            raise SyncGroupError(f"weight-sync v{version}: {who} did not confirm loading within {self.spec.timeout_s}s")

    # -------------------------------------------------------------------------------------------- receiver
    def receive(self, plan: SyncPlan, version: int) -> Iterator[tuple[str, torch.Tensor]]:
        """Members: yield (name, tensor) bucket by bucket as they arrive. Call `confirm(version)` after loading."""
        for i, bucket in enumerate(plan.buckets):
            flat = torch.empty(bucket.numel, dtype=getattr(torch, bucket.dtype), device=self.device)
            self._broadcast(flat, f"receiving bucket {i + 1}/{len(plan.buckets)} of v{version}")
            yield from unpack(bucket, flat)

    def confirm(self, version: int) -> None:
        self.store.set(f"done/{version}/{self.rank}", "1")


def receive_into(group: WeightGroup, plan: SyncPlan, version: int,
                 load: Callable[[Iterable[tuple[str, torch.Tensor]]], None]) -> int:
    """Stream the weights of `version` into `load` (an engine's in-place reload) and confirm. Returns #tensors."""
    count = 0
    stream = group.receive(plan, version)

    def counted() -> Iterator[tuple[str, torch.Tensor]]:
        nonlocal count
        for item in stream:
            count += 1
            yield item

    load(counted())
    for _ in stream:  # the sender blocks until every bucket's broadcast completes: drain what the loader left
        pass
    if count != plan.num_tensors:
        raise SyncGroupError(f"weight-sync v{version}: {group.spec.labels[group.rank]} loaded {count} of "
                             f"{plan.num_tensors} tensors (the engine's loader stopped early)")
    group.confirm(version)
    return count
