"""Misbehaving verifier plug-ins for tests/unit/test_isolation.py ("tests.unit.isolation_fixture:hangs" ...).

Each one fails in a way an in-process timeout cannot survive: blocking forever, spinning with SIGTERM ignored,
or taking the interpreter down without running any cleanup.
"""

from __future__ import annotations

import os
import signal
import time

from rlpt.types import Prompt, Score


def ok(prompt: Prompt, completion: str) -> Score:
    return Score(1.0, True, {"uid": prompt.uid})


def raises(prompt: Prompt, completion: str) -> Score:
    raise RuntimeError("boom")


def hangs(prompt: Prompt, completion: str) -> Score:
    time.sleep(1000)
    return Score(0.0, False)


def spins(prompt: Prompt, completion: str) -> Score:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL can stop this one
    while True:
        pass


def exits(prompt: Prompt, completion: str) -> Score:
    os._exit(3)


def unpicklable(prompt: Prompt, completion: str) -> Score:
    return Score(1.0, True, {"callback": lambda: None})  # cannot travel back over the pipe


def slow(prompt: Prompt, completion: str) -> Score:
    time.sleep(0.4)
    return ok(prompt, completion)


def by_text(prompt: Prompt, completion: str) -> Score:
    """Dispatch on the completion, so one verifier process sees every kind of failure in one batch."""
    fns = {"ok": ok, "raises": raises, "hangs": hangs, "spins": spins, "exits": exits, "forks": forks_sleeper,
           "unpicklable": unpicklable, "slow": slow}
    return fns[completion](prompt, completion)


def forks_sleeper(prompt: Prompt, completion: str) -> Score:
    """Leaves a grandchild behind (its pid written to meta["pid_file"]), then hangs: killing the verifier's
    process group must take both."""
    pid = os.fork()
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
    with open(prompt.meta["pid_file"], "w") as f:
        f.write(str(pid))
    return hangs(prompt, completion)
