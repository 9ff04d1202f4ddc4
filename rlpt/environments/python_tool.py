"""`python`: a sandboxed Python interpreter the model calls as a tool, then a verified final answer.

The prompt itself is the first turn (`reset` returns None). Each model turn is one of:
- a tool call: the turn holds a fenced code block (the LAST ```python / ```py / bare ``` block, as the `code`
  verifier reads it: `rlpt.verifiers.code.extract_code`). It runs in `rlpt.sandbox.run_python` under `limits`; the
  observation is its stdout then stderr, cut to `max_output_chars` (head and tail kept, with a marker saying how
  many characters were cut), followed by "[sandbox <status>: <detail>]" when it was not a clean exit. Not done,
  reward 0.0, info {"status": the sandbox status, "violation": bool, "calls": n, "cut_chars": k};
- the final answer: a turn without a code block is scored with the verifier (`rlpt.verifiers.load_verifier`,
  default "math"). Done, reward = the verifier's reward, info {"correct", "calls", "verifier": the score's info}.
A code turn after `max_calls` calls is not run: done, reward 0.0, info {"reason": "max_calls", "calls": n}.

A sandbox violation (timeout, cpu, memory, ...) is NOT an exception here: the model sees it as the observation and
may try again, and the status stays in info for metrics. Only `SandboxError` (the sandbox itself could not run)
propagates, which the environment pool records as an error row.

Deviations: the sandbox is asked for whole streams (`LIMITS.max_output_chars` = the file size limit) so the cut,
and the count in its marker, happen once, here; a caller passing its own `limits` with a smaller
`max_output_chars` gets the sandbox's own cut first. An unlabelled ``` block counts as code, like the `code`
verifier; a model that writes its final answer in a bare fence gets it run instead of scored.

>>> truncate("abcdefghij", 4)
('ab\\n...[6 chars cut]...\\nij', 6)
>>> truncate("short", 10)
('short', 0)
"""

from __future__ import annotations

from typing import Any

from rlpt.environments.base import EnvStep
from rlpt.sandbox import SandboxLimits, SandboxResult, run_python
from rlpt.types import Prompt
from rlpt.verifiers import Verifier, load_verifier
from rlpt.verifiers.code import extract_code

FILE_SIZE_BYTES = 1 << 20
LIMITS = SandboxLimits(wall_s=5.0, cpu_s=3, memory_mb=512, file_size_bytes=FILE_SIZE_BYTES, max_processes=16,
                       max_output_chars=FILE_SIZE_BYTES)


def truncate(text: str, max_chars: int) -> tuple[str, int]:
    """`text` cut to its first and last `max_chars // 2`-ish characters around a marker; and how many were cut.
    Head and tail both matter: the head shows what the program printed, the tail holds a traceback's error line."""
    if len(text) <= max_chars:
        return text, 0
    head = max_chars // 2
    cut = len(text) - max_chars
    return f"{text[:head]}\n...[{cut} chars cut]...\n{text[len(text) - (max_chars - head):]}", cut


def _join_lines(*parts: str) -> str:
    """The non-empty parts concatenated, each starting on a line of its own."""
    out = ""
    for part in filter(None, parts):
        out += ("\n" if out and not out.endswith("\n") else "") + part
    return out


def format_result(result: SandboxResult, max_chars: int) -> tuple[str, int]:
    """The observation for one tool call (see the module docstring) and the number of output characters cut."""
    text, cut = truncate(_join_lines(result.stdout, result.stderr), max_chars)
    if result.status != "ok":
        text = _join_lines(text, f"[sandbox {result.status}: {result.detail}]")
    return text, cut


class PythonTool:
    """Up to `max_calls` sandboxed code runs per trajectory, then a final answer scored by `verifier`."""

    def __init__(self, verifier: str = "math", max_calls: int = 4, max_output_chars: int = 2000,
                 limits: SandboxLimits = LIMITS) -> None:
        if max_calls < 0 or max_output_chars < 1:
            raise ValueError(f"python environment: need max_calls >= 0 and max_output_chars >= 1, "
                             f"got {max_calls} and {max_output_chars}")
        self.verify: Verifier = load_verifier(verifier)
        self.max_calls = max_calls
        self.max_output_chars = max_output_chars
        self.limits = limits
        self._prompt: Prompt | None = None
        self._calls = 0
        self._done = False

    def reset(self, prompt: Prompt) -> str | None:
        self._prompt, self._calls, self._done = prompt, 0, False
        return None  # the prompt is the first turn

    def step(self, model_turn: str) -> EnvStep:
        if self._prompt is None or self._done:
            raise RuntimeError("python environment: step() called before reset() or after the trajectory ended")
        code = extract_code(model_turn)
        if code == model_turn:  # no fenced block: a block's content is always shorter than the turn around it
            return self._final_answer(self._prompt, model_turn)
        if self._calls >= self.max_calls:
            self._done = True
            return EnvStep(observation=None, reward=0.0, done=True, info={"reason": "max_calls", "calls": self._calls})
        self._calls += 1
        result = run_python(code, limits=self.limits)
        observation, cut = format_result(result, self.max_output_chars)
        info: dict[str, Any] = {"status": result.status, "violation": result.violation, "calls": self._calls,
                                "cut_chars": cut}
        return EnvStep(observation=observation, reward=0.0, done=False, info=info)

    def _final_answer(self, prompt: Prompt, answer: str) -> EnvStep:
        score = self.verify(prompt, answer)
        self._done = True
        info = {"correct": score.correct, "calls": self._calls, "verifier": dict(score.info)}
        return EnvStep(observation=None, reward=score.reward, done=True, info=info)
