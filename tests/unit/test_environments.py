"""The environment contract (rlpt/environments): loading built-ins and plug-ins, EnvStep's checks, and the two
built-ins on hand-computed trajectories.

The sandbox runs (~0.1-0.5 s each; four in all) use small limits, as in tests/unit/test_sandbox.py, so the
infinite loop stops at 1 s of CPU.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from rlpt.environments import (ENVIRONMENTS, EnvStep, Environment, EnvironmentLoadError, PythonTool,
                               RetryWithFeedback, load_environment)
from rlpt.environments import python_tool
from rlpt.errors import SetupError
from rlpt.sandbox import SandboxResult
from rlpt.types import Prompt

pytestmark = pytest.mark.unit

ARITH = Prompt(uid="a0", text="3+4=", answer="7")
TOOL_LIMITS = dataclasses.replace(python_tool.LIMITS, wall_s=2.0, cpu_s=1, memory_mb=256, max_processes=8)


# ---- plug-ins loaded by the tests below as "tests.unit.test_environments:<name>" -------------------------------
class Echo:
    """Repeats the model's turn back until it says "bye"."""

    def reset(self, prompt: Prompt) -> str | None:
        return f"start {prompt.uid}"

    def step(self, model_turn: str) -> EnvStep:
        done = model_turn == "bye"
        return EnvStep(observation=None if done else model_turn, reward=1.0 if done else 0.0, done=done)


class NoStep:
    def reset(self, prompt: Prompt) -> str | None:
        return None


class NeedsArg(Echo):
    def __init__(self, level: int) -> None:
        self.level = level


NOT_CALLABLE = 3


# ---- loading --------------------------------------------------------------------------------------------------
def test_builtins_load_by_name_and_satisfy_the_protocol() -> None:
    assert ENVIRONMENTS == {"retry": RetryWithFeedback, "python": PythonTool}
    assert load_environment("retry") is RetryWithFeedback and load_environment("python") is PythonTool
    assert isinstance(RetryWithFeedback(), Environment) and isinstance(PythonTool(), Environment)


def test_plugin_class_is_the_factory() -> None:
    factory = load_environment("tests.unit.test_environments:Echo")
    assert factory is Echo
    env = factory()
    assert env.reset(ARITH) == "start a0"
    assert env.step("hi") == EnvStep(observation="hi", reward=0.0, done=False)
    assert env.step("bye") == EnvStep(observation=None, reward=1.0, done=True)


@pytest.mark.parametrize(("spec", "why"), [
    ("nope", "unknown environment 'nope': use one of ['python', 'retry']"),
    (":Echo", "must look like 'my_pkg.my_mod:MyEnv'"),
    ("tests.unit.no_such_module:Echo", "cannot import module 'tests.unit.no_such_module'"),
    ("tests.unit.test_environments:Missing", "has no attribute 'Missing'"),
    ("tests.unit.test_environments:NOT_CALLABLE", "is a int, not a callable"),
    ("tests.unit.test_environments:NoStep", "class has no method(s) ['step']"),
    ("tests.unit.test_environments:NeedsArg", "must be callable with no arguments (give defaults to ['level'])"),
])
def test_load_errors_name_the_spec_and_the_fault(spec: str, why: str) -> None:
    with pytest.raises(EnvironmentLoadError) as err:
        load_environment(spec)
    assert why in str(err.value) and repr(spec) in str(err.value)
    assert isinstance(err.value, SetupError)  # the CLI prints it without a traceback


def test_env_step_refuses_a_silent_dead_end_and_non_finite_rewards() -> None:
    with pytest.raises(ValueError, match="observation is None but done is False"):
        EnvStep(observation=None, reward=0.0, done=False)
    with pytest.raises(ValueError, match="not finite"):
        EnvStep(observation=None, reward=math.nan, done=True)


# ---- retry with feedback --------------------------------------------------------------------------------------
def test_retry_wrong_then_right() -> None:
    env = RetryWithFeedback()
    assert env.reset(ARITH) is None
    first = env.step("8")
    assert (first.observation, first.reward, first.done) == ("Wrong. Try again: 3+4=", 0.0, False)
    assert (first.info["attempt"], first.info["correct"]) == (1, False)
    second = env.step("7")
    assert (second.observation, second.reward, second.done) == (None, 1.0, True)
    assert (second.info["attempt"], second.info["correct"]) == (2, True)


def test_retry_wrong_twice_ends_with_zero_and_refuses_more_steps() -> None:
    env = RetryWithFeedback(hint="No. ")
    env.reset(ARITH)
    assert env.step("5").observation == "No. 3+4="
    last = env.step("six")
    assert (last.observation, last.reward, last.done, last.info["attempt"]) == (None, 0.0, True, 2)
    with pytest.raises(RuntimeError, match="after the trajectory ended"):
        env.step("7")


def test_retry_right_at_once_and_reset_starts_a_new_trajectory() -> None:
    env = RetryWithFeedback(max_attempts=1)
    env.reset(ARITH)
    assert env.step("9") == EnvStep(None, 0.0, True, {"attempt": 1, "correct": False, "verifier": {"pred": 9.0}})
    env.reset(Prompt(uid="a1", text="2+2=", answer="4"))
    assert env.step("4").reward == 1.0


def test_retry_refuses_a_graded_verifier_and_bad_settings() -> None:
    env = RetryWithFeedback(verifier="tests.unit.plugins_fixture:float_reward")  # returns correct=None
    env.reset(ARITH)
    with pytest.raises(ValueError, match="correct=None"):
        env.step("7")
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        RetryWithFeedback(max_attempts=0)


# ---- python tool ----------------------------------------------------------------------------------------------
def tool(**kw: int) -> PythonTool:
    env = PythonTool(limits=TOOL_LIMITS, **kw)
    assert env.reset(ARITH) is None
    return env


def test_python_tool_runs_the_last_block_then_stops_past_max_calls() -> None:
    env = tool(max_calls=1)
    got = env.step("Try:\n```python\nprint(1)\n```\nNo, this:\n```python\nprint(3 + 4)\n```")
    assert got == EnvStep("7\n", 0.0, False, {"status": "ok", "violation": False, "calls": 1, "cut_chars": 0})
    over = env.step("```python\nprint(0)\n```")  # not run
    assert over == EnvStep(None, 0.0, True, {"reason": "max_calls", "calls": 1})


def test_python_tool_shows_a_traceback() -> None:
    got = tool().step("```python\nraise ValueError('bad input')\n```")
    assert got.observation is not None and not got.done
    lines = got.observation.splitlines()
    assert lines[-2:] == ["ValueError: bad input", "[sandbox failed: exit code 1]"]
    assert (got.info["status"], got.info["violation"]) == ("failed", False)


def test_python_tool_violation_is_an_observation_and_the_trajectory_goes_on() -> None:
    env = tool()
    got = env.step("```python\nwhile True:\n    pass\n```")
    assert got.info["status"] in ("cpu", "timeout") and got.info["violation"] and not got.done
    assert got.observation is not None and f"[sandbox {got.info['status']}: " in got.observation
    final = env.step("So it is \\boxed{7}")
    assert (final.observation, final.reward, final.done) == (None, 1.0, True)
    assert (final.info["correct"], final.info["calls"]) == (True, 1)


def test_python_tool_cuts_huge_output_with_a_count() -> None:
    got = tool(max_output_chars=100).step("```python\nprint('x' * 100000)\n```")
    cut = 100001 - 100  # 100000 x's and a newline, kept to 50 head + 50 tail characters
    assert got.observation == "x" * 50 + f"\n...[{cut} chars cut]...\n" + "x" * 49 + "\n"
    assert (got.info["status"], got.info["cut_chars"]) == ("ok", cut)


@pytest.mark.parametrize(("answer", "reward", "correct"), [("7", 1.0, True), ("\\boxed{7}", 1.0, True),
                                                         ("The answer is 8.", 0.0, False)])
def test_python_tool_final_answer_is_scored_by_the_verifier(answer: str, reward: float, correct: bool) -> None:
    got = tool().step(answer)
    assert (got.observation, got.reward, got.done, got.info["correct"], got.info["calls"]) == (
        None, reward, True, correct, 0)


def test_format_result_joins_streams_and_appends_the_status() -> None:
    result = SandboxResult(status="timeout", exit_code=None, signal=None, stdout="partial", stderr="warn\n",
                           wall_s=2.0, cpu_s=0.1, detail="still running", net_isolated=True, uid=None)
    assert python_tool.format_result(result, 100) == ("partial\nwarn\n[sandbox timeout: still running]", 0)
    quiet = dataclasses.replace(result, status="ok", stdout="", stderr="", detail="")
    assert python_tool.format_result(quiet, 100) == ("", 0)
