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
