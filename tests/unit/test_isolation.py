"""The verifier process isolation (rlpt/isolation.py): hangs, spins and crashes cost one item, not the batch.

Each scorer start costs ~2-3 s (a spawned interpreter importing torch), so the tests share few processes.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

from rlpt.isolation import IsolatedScorer, VerifierProcessError, _verdict_message, verify_items
from rlpt.scoring import score_rollout
from rlpt.types import Prompt, Rollout, Score

pytestmark = pytest.mark.unit

BY_TEXT = "tests.unit.isolation_fixture:by_text"
TIMEOUT_S = 1.0


def rollout(text: str, i: int, meta: dict[str, str] | None = None) -> Rollout:
    prompt = Prompt(uid=f"p{i}", text="q", answer="1", meta=meta or {})
    return Rollout(prompt, sample_index=i, response_ids_T=(1, 2, 3), logprobs_T=(-0.1, -0.2, -0.3), text=text,
                   finish_reason="stop", policy_version=4)


def live_children() -> list[psutil.Process]:
    """Our child processes, minus multiprocessing's own resource tracker (started once, lives with us)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def test_mixed_batch_every_item_scored_in_order() -> None:
    texts = ["ok", "raises", "hangs", "ok", "spins", "exits", "unpicklable", "ok"]
    rollouts = [rollout(t, i) for i, t in enumerate(texts)]
    with IsolatedScorer(BY_TEXT, timeout_s=TIMEOUT_S, error_reward=-1.0) as scorer:
        t0 = time.perf_counter()
        scored = scorer.score(rollouts)
        elapsed = time.perf_counter() - t0
        restarts_s = sum(scorer.startup_s[1:])

        assert [s.rollout for s in scored] == rollouts  # the full rollout comes back, token ids included
        got = [(s.reward, s.correct, s.error) for s in scored]
        timeout = f"timeout: verifier {BY_TEXT} took longer than {TIMEOUT_S}s"
        assert got == [
            (1.0, True, None),
            (-1.0, None, "RuntimeError: boom"),
            (-1.0, None, timeout),
            (1.0, True, None),
            (-1.0, None, timeout),
            (-1.0, None, "crash: verifier process exited with code 3"),
            (-1.0, None, got[6][2]),
            (1.0, True, None),
        ]
        assert "verifier result cannot be sent" in str(got[6][2])
        assert scored[3].info == {"uid": "p3"}
        # hangs, spins and exits each cost one fresh child; the hangs took ~timeout_s, not their 1000 s.
        assert len(scorer.startup_s) == 4
        assert elapsed < 2 * TIMEOUT_S + restarts_s + 4.0, (elapsed, scorer.startup_s)

        again = scorer.score([rollout("ok", 0), rollout("raises", 1)])  # still usable; no spare restart
        assert [s.error for s in again] == [None, "RuntimeError: boom"]
        assert len(scorer.startup_s) == 4 and scorer.score([]) == []
        assert len(live_children()) == 1
    assert live_children() == []


def gone(pid: int, wait_s: float = 2.0) -> bool:
    """Whether `pid` is dead (a zombie counts: SIGKILL landed, only its reaper is left to act)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def test_group_kill_takes_grandchildren_and_restarts_are_bounded(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    scorer = IsolatedScorer(BY_TEXT, timeout_s=TIMEOUT_S, error_reward=0.0, max_restarts=0)
    try:
        with pytest.raises(VerifierProcessError, match=r"timed out or crashed on 1 of the first 1 items.*timeout:"):
            scorer.score([rollout("forks", 0, {"pid_file": str(pid_file)}), rollout("ok", 1)])
        assert gone(int(pid_file.read_text()))
        assert live_children() == []  # the failed child is gone and no new one was started for "ok"
    finally:
        scorer.close()
    assert live_children() == []


def test_load_error_raises_at_construction() -> None:
    spec = "tests.unit.isolation_fixture:nope"
    with pytest.raises(VerifierProcessError, match=f"{spec!r} failed to start.*VerifierLoadError.*'nope'"):
        IsolatedScorer(spec, timeout_s=TIMEOUT_S, error_reward=0.0)
    assert live_children() == []


@pytest.mark.parametrize("kwargs", [{"timeout_s": 0.0}, {"timeout_s": 1.0, "startup_timeout_s": -1.0}])
def test_bad_timeouts_rejected_without_starting(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        IsolatedScorer(BY_TEXT, error_reward=0.0, **kwargs)  # type: ignore[arg-type]


def test_timeout_is_per_item_not_per_batch() -> None:
    """Items of 0.4 s each take longer than timeout_s together, but none alone: every slow one is scored, and only
    the hanging one costs a timeout (and the one restart)."""
    rollouts = [rollout("slow", i) for i in range(3)] + [rollout("hangs", 3), rollout("slow", 4)]
    with IsolatedScorer(BY_TEXT, timeout_s=TIMEOUT_S, error_reward=0.0) as scorer:
        got = [(s.reward, s.error) for s in scorer.score(rollouts)]
        assert got[:3] == [(1.0, None)] * 3 and got[4] == (1.0, None)
        assert str(got[3][1]).startswith("timeout: ") and len(scorer.startup_s) == 2
        verdicts = scorer.score_items(verify_items(rollouts[:1]))  # the bare verdicts, no Rollout attached
        assert verdicts == [(1.0, True, {"uid": "p0"}, None)]


def _returns(value: object) -> Callable[[Prompt, str], object]:
    def verify(prompt: Prompt, completion: str) -> object:
        if isinstance(value, Exception):
            raise value
        return value
    return verify


@pytest.mark.parametrize("value", [Score(0.5, True, {"k": 1}), Score(1, None), ValueError("bad"), "not a score"])
def test_child_verdicts_equal_score_rollout(value: object) -> None:
    """The child scores without building Rollouts; its verdicts must be exactly score_rollout's."""
    verify = _returns(value)
    r = rollout("x", 0)
    want = score_rollout(verify, r, -2.0)  # type: ignore[arg-type]
    index, *verdict = pickle.loads(_verdict_message(verify, 7, r.prompt, r.text, -2.0))  # type: ignore[arg-type]
    assert index == 7 and tuple(verdict) == (want.reward, want.correct, want.info, want.error)
    assert type(verdict[0]) is float
