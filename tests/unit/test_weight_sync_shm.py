"""The shared-memory weight-sync transport with real processes (spawned members, gloo, /dev/shm): buckets arrive
bit-identical across versions even when the loader keeps every tensor (as vLLM's layerwise reload does), no file is
left in /dev/shm, a dead or late member fails the sync naming it, and members fail at once when rank 0 leaves."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.shm_slot import SHM_DIR, SHM_PREFIX, BufferPool, SharedSlot
from actors.weight_sync import GroupSpec, SyncGroupError, WeightGroup, host_store, receive_into
from rlpt.weights import SyncPlan, plan_buckets, state_checksum

pytestmark = pytest.mark.unit
CTX = mp.get_context("spawn")  # a forked child could hang in the parent's OpenMP pool
LABELS = ("learner rank 0", "rollout-0", "rollout-1")


def weights(version: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(version)
    return {"embed": torch.randn(96, 40, generator=g), "norm": torch.randn(40, generator=g).to(torch.bfloat16),
            "q": torch.randn(40, 40, generator=g), "q.bias": torch.randn(100, generator=g),
            "k.bias": torch.randn(200, generator=g), "big": torch.randn(3000, generator=g),
            "scalar": torch.randn((), generator=g)}


def plan() -> SyncPlan:
    return plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in weights(0).items()], bucket_bytes=8192)


def spec(port: int, transport: str = "auto", timeout: float = 30.0) -> GroupSpec:
    return GroupSpec(name="g", host="127.0.0.1", port=port, backend="gloo", timeout_s=timeout, labels=LABELS,
                     transport=transport)


def member(port: int, rank: int, transport: str, timeout: float, versions: list[int], behaviour: str,
           out: mp.Queue, gate: Any = None) -> None:
    """A member process: join, then per version load every tensor, holding the views (or misbehave; "borrow":
    receive views of the transport's own memory and copy each out; "borrow-hold": the same views, kept; "gated":
    load the last tensor of the first version only once `gate` is set)."""
    if behaviour == "cannot-map":
        SharedSlot.attach = staticmethod(lambda described: None)  # as if on another node
    out.put(("starting", rank))  # imports done: the rendezvous itself may now be held to a short timeout
    try:
        group = WeightGroup(spec(port, transport, timeout), rank)
        out.put(("joined", rank, group.transport_name))
        for v in versions:
            held: list[tuple[str, torch.Tensor]] = []

            def load(items):
                for n, (name, t) in enumerate(items):
                    if behaviour == "die" and v == versions[-1] and n == 2:
                        os._exit(3)
                    if behaviour == "slow" and n == 2:
                        time.sleep(timeout * 2)
                    if behaviour == "gated" and v == versions[0] and n == plan().num_tensors - 1:
                        gate.wait()
                    # no copy: a later bucket must not overwrite these (unless borrowed: "borrow" copies at once)
                    held.append((name, t.clone() if behaviour == "borrow" else t))

            receive_into(group, plan(), v, load, borrow=behaviour.startswith("borrow"))
            pool = len(group.transport.pool) if group.transport_name == "shm" else 0
            out.put(("got", rank, v, state_checksum(held), pool))
    except SyncGroupError as e:
        out.put(("error", rank, str(e), time.monotonic()))


def start(transport: str = "auto", behaviours: tuple[str, str] = ("ok", "ok"), versions: tuple[int, ...] = (1,),
          timeout: float = 30.0, gate: Any = None):
    store = host_store("127.0.0.1", timeout)
    out = CTX.Queue()
    procs = [CTX.Process(target=member, args=(store.port, r, transport, timeout, list(versions), b, out, gate))
             for r, b in zip((1, 2), behaviours)]
    for p in procs:
        p.start()
    assert [m[0] for m in messages(out, 2)] == ["starting"] * 2
    return store, out, procs


def messages(out: mp.Queue, n: int, timeout: float = 60.0) -> list[tuple]:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n:
        got.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
    return got


def our_shm_files() -> list[Path]:
    return sorted(SHM_DIR.glob(f"{SHM_PREFIX}{os.getpid()}-*"))


def send(group: WeightGroup, version: int, confirm: bool = True) -> None:
    w, p = weights(version), plan()
    # Two parts per bucket when it has two tensors or more, as a ZeRO-3 learner gathers them.
    group.send(p, version, lambda i: iter([{s.name: w[s.name]} for s in p.buckets[i].slots]), confirm)


def close(group: WeightGroup | None, procs: list) -> None:
    if group is not None:
        group.close()
    gc.collect()
    for p in procs:
        p.join(20)
        if p.is_alive():
            p.kill()


@pytest.mark.parametrize(("transport", "expect"), [("auto", "shm"), ("broadcast", "broadcast")])
def test_every_version_arrives_bit_identical_and_nothing_stays_in_dev_shm(transport, expect):
    store, out, procs = start(transport, versions=(1, 2, 3))
    group = None
    try:
        group = WeightGroup(spec(store.port, transport), 0, store=store, slot_bytes=plan().max_bucket_bytes)
        assert group.transport_name == expect
        assert our_shm_files() == []  # unlinked once every member mapped it: even a kill leaks nothing
        assert {m[2] for m in messages(out, 2)} == {expect}
        for v in (1, 2, 3):
            send(group, v)
            got = messages(out, 2)
            want = state_checksum(weights(v).items())
            assert [(m[0], m[2], m[3]) for m in got] == [("got", v, want)] * 2
            if expect == "shm":  # the loader held every bucket: one buffer per bucket, reused the next version
                assert {m[4] for m in got} == {len(plan().buckets)}
        assert len(plan().buckets) >= 3 and max(len(b.slots) for b in plan().buckets) == 3
    finally:
        close(group, procs)
        del store
    assert our_shm_files() == []


@pytest.mark.parametrize("transport", ["shm", "broadcast"])
def test_a_send_without_confirmation_returns_while_members_load_and_the_next_send_waits_for_them(transport):
    """confirm=False (the asynchronous loop's hand-off): rank 0 returns once the last bucket is handed over, the
    members still loading it; the next send first waits for their confirmation, then delivers the next version
    whole. The members here cannot finish v1 until the gate opens, so a send that waited for them would time out."""
    gate = CTX.Event()
    store, out, procs = start(transport, behaviours=("gated", "gated"), versions=(1, 2), gate=gate)
    group = None
    try:
        group = WeightGroup(spec(store.port, transport), 0, store=store, slot_bytes=plan().max_bucket_bytes)
        messages(out, 2)
        send(group, 1, confirm=False)
        assert group.unconfirmed is not None and group.times["end"] == 0.0
        assert out.empty()  # both members are still inside v1's last tensor
        gate.set()
        send(group, 2)
        got = sorted(messages(out, 4), key=lambda m: (m[2], m[1]))
        assert [(m[0], m[1], m[2], m[3]) for m in got] == [
            ("got", r, v, state_checksum(weights(v).items())) for v in (1, 2) for r in (1, 2)]
        assert group.unconfirmed is None
    finally:
        gate.set()
        close(group, procs)
        del store


def test_members_that_never_confirm_a_deferred_version_are_named_by_the_next_send():
    gate = CTX.Event()
    store, out, procs = start("shm", behaviours=("gated", "ok"), versions=(1, 2), timeout=2.0, gate=gate)
    group = None
    try:
        group = WeightGroup(spec(store.port, "shm", 2.0), 0, store=store, slot_bytes=plan().max_bucket_bytes)
        messages(out, 2)
        send(group, 1, confirm=False)
        with pytest.raises(SyncGroupError, match=r"rollout-0 did not confirm loading v1 within 2.0s"):
            send(group, 2)
    finally:
        gate.set()
        close(group, procs)
        del store


def test_a_borrowing_loader_reads_the_slot_itself_without_a_private_copy():
    """`borrow`: no pooled buffer; rank 0 packs bucket i + 1 only after every member loaded bucket i (the copying
    member gets every version whole), and what it hands out really is the slot (views kept past their bucket see
    the later buckets' bytes)."""
    store, out, procs = start("shm", behaviours=("borrow", "borrow-hold"), versions=(1, 2))
    group = None
    try:
        group = WeightGroup(spec(store.port, "shm"), 0, store=store, slot_bytes=plan().max_bucket_bytes)
        assert {m[2] for m in messages(out, 2)} == {"shm"}
        for v in (1, 2):
            send(group, v)
            got = {m[1]: m for m in messages(out, 2)}
            want = state_checksum(weights(v).items())
            assert (got[1][0], got[1][3], got[1][4]) == ("got", want, 0)
            assert got[2][0] == "got" and got[2][3] != want and got[2][4] == 0
    finally:
        close(group, procs)
        del store


def test_a_member_that_dies_mid_sync_is_named_at_once_and_the_others_fail_when_rank0_leaves():
    store, out, procs = start(behaviours=("ok", "die"), versions=(1, 2))
    group = WeightGroup(spec(store.port), 0, store=store, slot_bytes=plan().max_bucket_bytes)
    try:
        messages(out, 2)
        send(group, 1)
        messages(out, 2)
        start_s = time.monotonic()
        with pytest.raises(SyncGroupError, match=r"rollout-1 did not release bucket .* left the group") as info:
            send(group, 2)
        assert "rollout-0" not in str(info.value) and time.monotonic() - start_s < 10  # not the 30 s timeout
        group.close()
        left = time.monotonic()
        del store
        gc.collect()
        kind, rank, message, when = messages(out, 1)[0]
        assert (kind, rank) == ("error", 1) and "learner rank 0 did not deliver bucket" in message
        assert when - left < 10  # rank 0 left: the member blocked on it failed at once
    finally:
        close(None, procs)
    assert procs[1].exitcode == 3


def test_a_late_member_is_named_within_the_timeout():
    store, out, procs = start(behaviours=("slow", "ok"), timeout=1.5)
    group = WeightGroup(spec(store.port, timeout=1.5), 0, store=store, slot_bytes=plan().max_bucket_bytes)
    try:
        messages(out, 2)
        start_s = time.monotonic()
        with pytest.raises(SyncGroupError, match=r"rollout-0 did not release bucket \d/\d of v1 within 1.5s"):
            send(group, 1)
        assert time.monotonic() - start_s < 8
    finally:
        close(group, procs)
        del store


def test_shm_requested_but_a_member_cannot_map_it_is_refused_naming_it():
    store, out, procs = start("shm", behaviours=("ok", "cannot-map"), timeout=10.0)
    try:
        with pytest.raises(SyncGroupError, match=r"sync.transport=shm but rollout-1 cannot map"):
            WeightGroup(spec(store.port, "shm", 10.0), 0, store=store, slot_bytes=plan().max_bucket_bytes)
        errors = sorted(messages(out, 2), key=lambda m: m[1])
        assert all(m[0] == "error" and "refused the group" in m[2] for m in errors)
    finally:
        close(None, procs)
        del store
    assert our_shm_files() == []


def test_pool_reuses_a_buffer_only_once_no_tensor_of_it_is_alive():
    p = plan()
    pool = BufferPool(p.max_bucket_bytes)
    a = pool.take(p.buckets[0])
    views = [a[:4].view(2, 2), a[4:8]]
    del a
    b = pool.take(p.buckets[0])
    assert len(pool) == 2  # the views keep the first buffer lent
    del views, b
    pool.take(p.buckets[1])
    assert len(pool) == 2  # both free again: reused, not grown


def test_slot_attach_checks_the_token_and_unlink_is_idempotent():
    slot = SharedSlot.create(4096)
    assert slot is not None
    try:
        path, size, token = slot.describe().split("|")
        assert SharedSlot.attach(f"{path}|{size}|{'0' * len(token)}") is None  # another /dev/shm's file
        other = SharedSlot.attach(slot.describe())
        assert other is not None
        slot.data[:4] = torch.tensor([1, 2, 3, 4], dtype=torch.uint8)
        assert other.data[:4].tolist() == [1, 2, 3, 4]  # the same memory
    finally:
        slot.unlink()
        slot.unlink()
    assert not Path(slot.path).exists() and SharedSlot.attach(slot.describe()) is None
