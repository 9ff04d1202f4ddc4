"""The `code` verifier on the real VerifierPool (Ray actors -> killable verifier process -> sandbox): adversarial
programs mixed with good ones each get exactly one ScoredRollout, in order; the bad ones are explicit error rows
named by their sandbox status, the good ones score 1.0, and the pool is still usable afterwards."""

import socket
import uuid
from pathlib import Path

import pytest

from actors.placement import cpu_actor_options
from actors.verifier import VerifierPool, VerifierWorker
from rlpt.sandbox import UID_RANGE
from rlpt.types import Prompt, Rollout
from tests.unit.test_sandbox import procs_of

pytestmark = pytest.mark.ray

TESTS = "assert add(2, 3) == 5"
GOOD = "```python\ndef add(a, b):\n    return a + b\n```"


def rollout(i, text, answer=TESTS):
    prompt = Prompt(uid=f"c{i}", text="Write add(a, b).", answer=answer)
    return Rollout(prompt, sample_index=i, response_ids_T=(1, 2), logprobs_T=(-0.1, -0.2), text=text,
                   finish_reason="stop", policy_version=7)


def test_adversarial_programs_are_contained_and_reported(ray_cluster):
    ray = ray_cluster
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    outside = Path("/tmp") / f"rlpt-ray-sandbox-{uuid.uuid4().hex}"
    # (completion, expected: 1.0 for a pass, 0.0 for a wrong program, else the error's start)
    cases = [
        (GOOD, 1.0),
        ("while True:\n    pass", "SandboxViolation: cpu: "),  # 3 s CPU: can lose to the 5 s wall on a busy box
        ("import time\ntime.sleep(100)", "SandboxViolation: timeout: "),
        (GOOD, 1.0),
        ("x = bytearray(4 << 30)", "SandboxViolation: memory: "),
        ("import os\nwhile True:\n    os.fork()", "SandboxViolation: fork: "),
        (f"open({str(outside)!r}, 'w').write('pwned')", "SandboxViolation: write_outside: "),
        (f"import socket\nsocket.create_connection(('127.0.0.1', {port}))", "SandboxViolation: network: "),
        ("def add(a, b):\n    raise ValueError('no')", 0.0),
        (GOOD, 1.0),
    ]
    rollouts = [rollout(i, text) for i, (text, _) in enumerate(cases)]
    rollouts.append(rollout(len(cases), GOOD, answer=None))  # the verifier itself raises: no tests
    make = ray.remote(VerifierWorker).options(**cpu_actor_options())
    workers = [make.remote(f"verifier-{k}", "code", 10.0, -1.0) for k in range(2)]
    pool = VerifierPool(workers, ["verifier-0", "verifier-1"], per_item_timeout_s=10.0)
    try:
        scored = pool.score(rollouts)

        assert [s.rollout for s in scored] == rollouts  # exactly one each, in order
        for (text, expected), s in zip(cases, scored):
            if isinstance(expected, float):
                assert (s.reward, s.error) == (expected, None), (text, s)
            else:
                cpu_or_wall = expected.startswith("SandboxViolation: cpu") and s.error.startswith(
                    "SandboxViolation: timeout: ")
                assert s.error.startswith(expected) or cpu_or_wall, (text, s.error)
                assert (s.reward, s.correct) == (-1.0, None)
        assert scored[-1].error.startswith("ValueError: code verifier: prompt 'c10' has no tests")
        # the machine is unharmed: nothing written, nobody connected, no sandbox process left
        assert not outside.exists()
        with pytest.raises(BlockingIOError):
            server.accept()
        assert procs_of(UID_RANGE) == []

        again = pool.score([rollout(i, GOOD) for i in range(4)])  # the pool still works, no actor was replaced
        assert [(s.reward, s.error) for s in again] == [(1.0, None)] * 4 and pool.restarts == 0
    finally:
        server.close()
        for w in workers:
            ray.kill(w)
