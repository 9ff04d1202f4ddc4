"""`code`: run the model's Python program followed by the prompt's tests in the sandbox (rlpt/sandbox.py).

The program is the last ```python (or ```py / bare ```) fenced block of the completion, or the whole completion
when it has none. `prompt.answer` holds the tests: Python source, typically `assert` statements, appended after the
program and run in the same namespace (`__name__ == "__main__"`); `prompt.meta["stdin"]` (optional) is its stdin.

Verdicts:
- every test passes: Score(1.0, True). "Passes" means exit 0 *and* a random token, printed after the tests, reached
  stdout, so a program that exits early (`sys.exit(0)`, `os._exit(0)`) before the tests run does not pass;
- a failing assert, an exception, a syntax error, a signal it sent itself: Score(0.0, False) with
  info {"status", "error"} — a wrong program is a normal zero reward, not an error;
- the sandbox stopped it (timeout, cpu, memory, fork, file_size, write_outside, network, forbidden): raises
  `SandboxViolation("<status>: <detail>")`, which the verifier pool turns into an error row
  ("SandboxViolation: memory: ...", reward `verifier.error_reward`) counted in `verifier/errors` and
  `verifier/errors/sandbox_<status>`.

Known limits: tests run inside the program's own process, so a program can defeat value checks (an object whose
`__eq__` always returns True passes `assert f(1) == 2`); write tests that also check types where it matters.
Only the standard library is importable. The limits below are per rollout; WALL_S plus the sandbox's start and
clean-up (~0.1 s, up to 3 s more if the sandbox itself hangs) stays below `verifier.timeout_s` (10 s default).

>>> extract_code("Here:\\n```python\\ndef f(x):\\n    return x + 1\\n```\\nDone.")
'def f(x):\\n    return x + 1\\n'
>>> extract_code("def f(x): return x")
'def f(x): return x'
"""

from __future__ import annotations

import re
import secrets

from rlpt.sandbox import SandboxLimits, SandboxViolation, run_python
from rlpt.types import Prompt, Score

WALL_S = 5.0
CPU_S = 3
MEMORY_MB = 512
FILE_SIZE_BYTES = 1 << 20
MAX_PROCESSES = 16
LIMITS = SandboxLimits(wall_s=WALL_S, cpu_s=CPU_S, memory_mb=MEMORY_MB, file_size_bytes=FILE_SIZE_BYTES,
                       max_processes=MAX_PROCESSES)
MAX_INFO_CHARS = 200
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(completion: str) -> str:
    """The last fenced code block (python, py or unlabelled); the whole completion when there is none."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def verify(prompt: Prompt, completion: str) -> Score:
    """Reward 1.0 when the extracted program passes the tests in `prompt.answer` (see the module docstring)."""
    if prompt.answer is None or not prompt.answer.strip():
        raise ValueError(f"code verifier: prompt {prompt.uid!r} has no tests in its answer")
    token = f"rlpt-tests-passed-{secrets.token_hex(8)}"
    last_line = "\n" + token  # a line of its own even after the program's print(..., end="")
    program = f"{extract_code(completion)}\n\n# --- tests ---\n{prompt.answer}\n\nprint({last_line!r})\n"
    result = run_python(program, stdin=str(prompt.meta.get("stdin", "")), limits=LIMITS)
    if result.violation:
        raise SandboxViolation(f"{result.status}: {result.detail}")
    passed = result.status == "ok" and token in result.stdout.splitlines()
    if passed:
        return Score(reward=1.0, correct=True, info={"status": "ok"})
    status = result.status if result.status != "ok" else "exited_before_tests"
    lines = result.stderr.strip().splitlines()
    error = (lines[-1] if lines else "")[:MAX_INFO_CHARS]  # e.g. "AssertionError" or "NameError: name 'f' ..."
    return Score(reward=0.0, correct=False, info={"status": status, "error": error})
