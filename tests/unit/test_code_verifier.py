"""The `code` verifier (rlpt/verifiers/code.py) and the per-kind error metrics (rlpt/loops/common.py).

Right and wrong programs are verdicts (1.0 / 0.0); what the sandbox stops raises SandboxViolation, which
score_rollout turns into an error row "SandboxViolation: <status>: ..." counted as verifier/errors/sandbox_<status>.
"""

from __future__ import annotations

import pytest

from rlpt.loops.common import error_kind, rollout_metrics
from rlpt.sandbox import SandboxLimits, SandboxViolation
from rlpt.scoring import score_rollout
from rlpt.types import Prompt, Rollout, Score, ScoredRollout
from rlpt.verifiers import code, load_verifier

pytestmark = pytest.mark.unit

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
RIGHT = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds."


def prompt(answer: str | None = TESTS, **meta: str) -> Prompt:
    return Prompt(uid="c0", text="Write add(a, b).", answer=answer, meta=meta)


@pytest.fixture(autouse=True)
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code, "LIMITS", SandboxLimits(wall_s=2.0, cpu_s=1, memory_mb=256, max_processes=8))


def test_registered_as_code() -> None:
    assert load_verifier("code") is code.verify


@pytest.mark.parametrize("completion", [
    RIGHT,
    "def add(a, b):\n    return a + b",
    "```py\nadd = lambda a, b: a + b\n```",
    "print('no newline at the end', end='')\ndef add(a, b):\n    return a + b",
    "```python\ndef add(a, b): return 0\n```\nfixed:\n```python\ndef add(a, b): return a + b\n```",  # the last block
])
def test_right_program_scores_one(completion: str) -> None:
    assert code.verify(prompt(), completion) == Score(1.0, True, {"status": "ok"})


@pytest.mark.parametrize(("completion", "error"), [
    ("```python\ndef add(a, b):\n    return a - b\n```", "AssertionError"),
    ("```python\ndef add(a, b):\n    return a / 0\n```", "ZeroDivisionError: division by zero"),
    ("```python\ndef add(a, b)\n    return a + b\n```", "SyntaxError: expected ':'"),
    ("I cannot solve this.", "SyntaxError: invalid syntax"),
    ("```python\nraise RuntimeError('nope')\n```", "RuntimeError: nope"),
])
def test_wrong_program_is_zero_not_an_error(completion: str, error: str) -> None:
    assert code.verify(prompt(), completion) == Score(0.0, False, {"status": "failed", "error": error})


@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_exiting_before_the_tests_does_not_pass(exit_call: str) -> None:
    score = code.verify(prompt(), f"def add(a, b):\n    return 0\n{exit_call}")
    assert (score.reward, score.correct, score.info["status"]) == (0.0, False, "exited_before_tests")


def test_stdin_from_meta() -> None:
    p = prompt("assert total == 7", stdin="3 4\n")
    assert code.verify(p, "total = sum(map(int, input().split()))").reward == 1.0


@pytest.mark.parametrize(("program", "status"), [
    ("while True:\n    pass", "cpu"),
    ("import time\ntime.sleep(100)", "timeout"),
    ("x = bytearray(2 << 30)", "memory"),
    ("import os\nwhile True:\n    os.fork()", "fork"),
    ("open('/tmp/rlpt-code-verifier-test', 'w').write('x')", "write_outside"),
    ("import socket\nsocket.socket().connect(('127.0.0.1', 9))", "network"),
    ("import subprocess\nsubprocess.run(['true'])", "forbidden"),
])
def test_violation_raises_and_becomes_an_error_row(program: str, status: str) -> None:
    with pytest.raises(SandboxViolation, match=f"^{status}: "):
        code.verify(prompt(), program)
    rollout = Rollout(prompt(), 0, (1,), (-0.5,), program, "stop", 3)
    scored = score_rollout(code.verify, rollout, error_reward=-1.0)
    assert (scored.reward, scored.correct) == (-1.0, None)
    assert scored.error is not None and scored.error.startswith(f"SandboxViolation: {status}: ")
    assert error_kind(scored.error) == f"sandbox_{status}"


def test_missing_tests_is_an_error() -> None:
    with pytest.raises(ValueError, match="'c0' has no tests"):
        code.verify(prompt(None), RIGHT)


def test_per_kind_error_metrics() -> None:
    def scored(error: str | None) -> ScoredRollout:
        return ScoredRollout(Rollout(prompt(), 0, (1, 2), (-0.1, -0.2), "x", "stop", 1), 0.0, None, error=error)

    errors = [None, "timeout: verifier code took longer than 10.0s", "timeout: again", "crash: exited with code 3",
              "SandboxViolation: memory: MemoryError at the 512 MiB limit", "RuntimeError: verifier bug on p1",
              "Weird-Name Error!: x", None]
    metrics = rollout_metrics([scored(e) for e in errors], learner_version=1)
    assert {k: v for k, v in metrics.items() if k.startswith("verifier/errors")} == {
        "verifier/errors": 6.0,
        "verifier/errors/timeout": 2.0,
        "verifier/errors/crash": 1.0,
        "verifier/errors/sandbox_memory": 1.0,
        "verifier/errors/runtimeerror": 1.0,
        "verifier/errors/weird_name_error": 1.0,
    }


def test_sandbox_worst_case_fits_in_the_verifier_timeout() -> None:
    from rlpt.config import VerifierConfig
    from rlpt.sandbox import _GRACE_S

    # wall limit + the caller's grace for a stuck supervisor + ~1 s of start and clean-up < the pool's per-call timeout
    assert code.WALL_S + _GRACE_S + 1.0 <= VerifierConfig().timeout_s
