"""EngineSync.settle: the asynchronous loop's hand-off leaves the members' loads running; the next sync first
waits for them. A member that died while loading is left to the fleet (a line says so; the run goes on), one whose
load raised fails the sync naming it and its error, one still loading past the timeout is named as late. Stand-in
members with the engines' `receive_weights` surface."""

import os
import time

import pytest

from actors.sync_group import EngineSync
from actors.weight_sync import SyncGroupError

pytestmark = pytest.mark.ray


class Member:
    def receive_weights(self, plan, version, how):
        if how == "die":
            os._exit(1)
        if how == "raise":
            raise ValueError("size mismatch for embed\nsecond line")
        if how == "slow":
            time.sleep(30)
        return 0.001


def loading(ray, hows):
    actor = ray.remote(Member)
    members = [actor.remote() for _ in hows]
    refs = [m.receive_weights.remote(None, 3, how) for m, how in zip(members, hows)]
    sync = EngineSync(learner=None, membership=None, plan=None, probe_ids=[], tolerance=0.0, timeout_s=5.0)
    sync.loading = (refs, [f"rollout-{i}" for i in range(len(hows))], 3)
    return sync


def test_a_member_that_died_loading_is_left_to_the_fleet(ray_cluster, capsys):
    sync = loading(ray_cluster, ["ok", "die"])
    sync.settle()
    assert sync.loading is None
    assert "rollout-1 died while loading weights v3" in capsys.readouterr().err
    sync.settle()  # nothing left to wait for


def test_a_member_whose_load_raised_fails_the_sync_naming_it(ray_cluster):
    sync = loading(ray_cluster, ["ok", "raise"])
    with pytest.raises(SyncGroupError, match=r"weight sync v3: rollout-1 failed to load: ValueError: size mismatch for embed$"):
        sync.settle()


def test_a_member_still_loading_past_the_timeout_is_named(ray_cluster):
    sync = loading(ray_cluster, ["slow", "ok"])
    with pytest.raises(SyncGroupError, match=r"weight sync v3: rollout-0 did not finish loading within 5.0s"):
        sync.settle()
