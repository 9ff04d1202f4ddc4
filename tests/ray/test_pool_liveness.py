"""RolloutPool.check_alive (run by the fleet before every sync): an engine that returned a chunk since the last
check is not pinged again (it was alive a moment ago; a death since is the sync's to repair), any other engine is;
a dead one is reported. Stand-in actors with the engines' `generate`/`ping` surface, counting their pings."""

import pytest

from actors.rollout import RolloutPool
from rlpt.types import Prompt, SamplingSpec

pytestmark = pytest.mark.ray


class Engine:
    def __init__(self) -> None:
        self.pings = 0

    def generate(self, prompts, seeds, spec, prefix_lens=None):
        return [], 0.001

    def ping(self) -> str:
        self.pings += 1
        return "ok"

    def count(self) -> int:
        return self.pings


def test_only_engines_that_answered_nothing_since_the_last_check_are_pinged(ray_cluster):
    actor = ray_cluster.remote(Engine)
    a, b = actor.remote(), actor.remote()
    pool = RolloutPool([a, b], ["a", "b"], timeout_s=60)
    spec = SamplingSpec(n=1, max_tokens=1, temperature=1.0, top_p=1.0, top_k=0, stop=())
    pool.generate([Prompt(uid="p0", text="x", prompt_ids=(1,))], [0], spec)  # one chunk: one engine answers
    pings = lambda: [ray_cluster.get(e.count.remote()) for e in (a, b)]  # noqa: E731
    assert pool.check_alive(60) == set()
    assert sorted(pings()) == [0, 1]  # the idle one only
    answered = pings().index(0)
    assert pool.check_alive(60) == set()
    assert pings()[answered] == 1 and pings()[1 - answered] == 2  # nothing answered since: both pinged
    ray_cluster.kill((a, b)[1 - answered])
    pool.generate([Prompt(uid="p1", text="x", prompt_ids=(1,))], [1], spec)
    assert pool.check_alive(60) == {1 - answered}  # a dead one is found, by generation or by its ping
