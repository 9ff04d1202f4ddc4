"""A rollout engine whose weight load failed part-way holds a mix of two versions. In the asynchronous loop the
driver learns of the failure only at the next sync (EngineSync.hand_off), so until a load succeeds the engine
refuses to generate or probe, naming why, instead of sampling from the mix."""

import pytest

from actors.rollout import RolloutWorker
from rlpt.types import Prompt, SamplingSpec

pytestmark = pytest.mark.unit


class Engine:
    def __init__(self):
        self.fail_next = False

    def receive_weights(self, plan, version):
        if self.fail_next:
            raise OSError("connection reset by peer\nmore")

    def generate(self, prompt_ids, seeds, spec):
        return [[((7,), (-0.5,), "length")] for _ in prompt_ids]

    def prompt_logprobs(self, ids):
        return [-1.0] * (len(ids) - 1)


def worker():
    w = object.__new__(RolloutWorker)  # the actor body without an engine process behind it
    w.name, w.engine, w.eos_ids, w.policy_version, w.unloaded = "rollout-0", Engine(), frozenset(), 0, None
    w.decode = lambda ids: "x"
    return w


def test_after_a_failed_load_the_engine_refuses_to_serve_until_a_load_succeeds():
    w, prompt = worker(), Prompt(uid="p0", text="q", answer="1", prompt_ids=(3, 4))
    spec = SamplingSpec(n=1, max_tokens=1)
    w.receive_weights(None, 1)
    assert w.generate([prompt], [0], spec)[0][0].policy_version == 1
    w.engine.fail_next = True
    with pytest.raises(OSError):
        w.receive_weights(None, 2)
    assert w.policy_version == 1
    for call in (lambda: w.generate([prompt], [0], spec), lambda: w.probe([3, 4])):
        with pytest.raises(RuntimeError, match=r"rollout-0: its weights are not a whole version \(loading v2 "
                                               r"failed: connection reset by peer\)"):
            call()
    w.engine.fail_next = False
    w.receive_weights(None, 3)
    assert w.generate([prompt], [0], spec)[0][0].policy_version == 3 and w.probe([3, 4]) == [-1.0]
