"""Weight-sync rendezvous and transfer with real gloo groups in threads (no Ray): a member that never joins
fails the sync within the timeout, naming it; a full transfer streams every tensor bit-exactly."""

import threading
import time

import pytest
import torch

from actors.weight_sync import GroupSpec, SyncGroupError, WeightGroup, host_store, receive_into
from rlpt.weights import plan_buckets

pytestmark = pytest.mark.unit


def spec(port, labels, timeout=2.0, name="g"):
    return GroupSpec(name=name, host="127.0.0.1", port=port, backend="gloo", timeout_s=timeout, labels=labels)


def test_member_that_never_joins_is_named_within_the_timeout():
    store = host_store("127.0.0.1", 2.0)
    s = spec(store.port, ("learner rank 0", "rollout-0", "rollout-1"))
    errors = {}

    def member():
        try:
            WeightGroup(s, 1)
        except SyncGroupError as e:
            errors["member"] = str(e)

    t = threading.Thread(target=member)
    t.start()
    start = time.monotonic()
    with pytest.raises(SyncGroupError, match=r"rollout-1 did not join within 2.0s"):
        WeightGroup(s, 0, store=store)
    assert time.monotonic() - start < 6
    t.join(10)
    assert "learner rank 0 (rank 0) did not confirm" in errors["member"]


def test_unreachable_store_names_the_host():
    with pytest.raises(SyncGroupError, match="cannot reach the sync store of learner rank 0"):
        WeightGroup(spec(1, ("learner rank 0", "rollout-0"), timeout=1.0), 1)


def test_bucketed_transfer_is_bit_exact():
    torch.manual_seed(0)
    weights = {"a": torch.randn(3, 4), "b": torch.randn(100), "c": torch.randn(2, 2).to(torch.bfloat16)}
    plan = plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in weights.items()], bucket_bytes=64)
    assert len(plan.buckets) >= 3
    store = host_store("127.0.0.1", 10.0)
    s = spec(store.port, ("learner rank 0", "rollout-0"), timeout=10.0)
    got = {}

    def member():
        g = WeightGroup(s, 1)
        receive_into(g, plan, 1, lambda items: got.update({k: v.clone() for k, v in items}))

    t = threading.Thread(target=member)
    t.start()
    sender = WeightGroup(s, 0, store=store)
    assert sender.transport_name == "broadcast"  # no slot offered (no slot_bytes): today's broadcast path
    sender.send(plan, 1, lambda i: iter([{slot.name: weights[slot.name] for slot in plan.buckets[i].slots}]))
    t.join(20)
    assert set(got) == set(weights)
    for k in weights:
        assert torch.equal(got[k], weights[k]) and got[k].dtype == weights[k].dtype


def test_a_failure_confirming_the_last_version_still_asks_for_every_part():
    """A send first settles the version sent before without confirmation (a hand-off). If that fails with any
    error, every part of every bucket is still asked for (a ZeRO-3 learner's other ranks are inside those
    gathers), and the failure is raised naming the phase."""
    weights = {"a": torch.randn(3, 4), "b": torch.randn(100)}
    plan = plan_buckets([(k, tuple(v.shape), v.dtype) for k, v in weights.items()], bucket_bytes=64)

    class Transport:
        def end(self, plan, version):
            raise OSError("store connection reset")

    group = object.__new__(WeightGroup)  # a rank 0 whose group formed; only its send is exercised here
    group.spec, group.rank = spec(0, ("learner rank 0", "rollout-0")), 0
    group.transport, group.unconfirmed, group.times = Transport(), (plan, 1), {}
    asked = []

    def parts(i):
        for slot in plan.buckets[i].slots:
            asked.append(slot.name)
            yield {slot.name: weights[slot.name]}

    with pytest.raises(SyncGroupError, match=r"starting v2 failed on learner rank 0 .*store connection reset"):
        group.send(plan, 2, parts)
    assert sorted(asked) == sorted(weights) and len(plan.buckets) == 2
