"""Math answers checked with math-verify (huggingface/Math-Verify, 0.9.0): symbolic / numeric equivalence.

What it checks: the gold `prompt.answer` (e.g. "42", "\\frac{1}{2}", "x^2+1") is parsed first, then the completion;
math-verify extracts the last boxed / LaTeX / plain expression and `verify(gold, pred)` compares them (sympy
equality, numeric rounding, sets, intervals ...). Reward 1.0 if equivalent, else 0.0.

Deviations and limits:
- Only the last `MAX_COMPLETION_CHARS` characters of the completion are parsed: the final answer sits at the end,
  and sympy/ANTLR time grows with input size (a 4000-char nest of braces already takes ~10 s), so a 200k-char
  runaway completion must not reach the parser whole. An answer earlier than that window is not seen.
- Timeouts: math-verify times out with `signal.alarm`, which only works in the main thread (elsewhere `parse` and
  `verify` raise ValueError even with raise_on_error=False). So we pass `MAIN_THREAD_TIMEOUT_S` in the main thread
  and None (no timeout) in any other thread. Without a timeout an adversarial answer can run for a long time
  (`\\boxed{10^{10^{10}}}` against "42" did not finish in 15 s): the VerifierPool's own per-call timeout is then
  the only bound, so run this verifier in worker processes (main thread) where possible. Note that math-verify's
  alarm wrapper calls `signal.alarm(0)` on exit, cancelling any SIGALRM a caller had set: callers must not time
  this function out with SIGALRM themselves.
- A gold answer that math-verify cannot parse (also after wrapping it in `$...$`) is a data error: ValueError
  naming the prompt, so the pool records an explicit error instead of a silent 0 for every sample.
- Completion-side exceptions (math-verify or sympy) and timeouts become correct=False with info["reason"]. The
  (gold, pred) candidate pairs are compared one at a time so such an error is reported, not hidden, and does not
  stop a later pair from matching. A gold that parses only to math-verify's raw-string fallback (e.g. "???") is
  compared as a string.

>>> from rlpt.types import Prompt
>>> verify(Prompt(uid="p0", text="1/4 + 1/4 = ?", answer="\\\\frac{1}{2}"), "So the sum is $\\\\boxed{0.5}$.")
Score(reward=1.0, correct=True, info={'pred': '\\\\frac{1}{2}'})
>>> verify(Prompt(uid="p1", text="6*7 = ?", answer="42"), "The answer is \\\\boxed{41}.")
Score(reward=0.0, correct=False, info={'pred': '41'})
>>> verify(Prompt(uid="p2", text="6*7 = ?", answer="42"), "I don't know.")
Score(reward=0.0, correct=False, info={'reason': 'no answer found'})
"""

from __future__ import annotations

import threading
from itertools import product
from typing import Any

from math_verify import parse as mv_parse
from math_verify import verify as mv_verify
from math_verify.errors import TimeoutException

from rlpt.types import Prompt, Score

MAX_COMPLETION_CHARS = 4000
MAIN_THREAD_TIMEOUT_S = 3  # per parse and per (gold, pred) comparison; legit answers take milliseconds
MAX_INFO_CHARS = 200  # keep info small: it is logged and written to rollout parquet files


def _timeout_s() -> int | None:
    # signal.alarm only works in the main thread; elsewhere math-verify raises, so run without a timeout.
    return MAIN_THREAD_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_gold(prompt: Prompt) -> list[Any]:
    if prompt.answer is None or not prompt.answer.strip():
        raise ValueError(f"math verifier: prompt {prompt.uid!r} has no answer")
    # Bare LaTeX like "\sqrt{2}" is only found inside math delimiters, so retry wrapped in $...$.
    for text in (prompt.answer, f"${prompt.answer}$"):
        gold = mv_parse(text, parsing_timeout=_timeout_s(), raise_on_error=True)
        if gold:
            return gold
    raise ValueError(
        f"math verifier: gold answer {prompt.answer!r} of prompt {prompt.uid!r} is not parseable by math-verify "
        "(use the 'exact' verifier for non-math answers)"
    )


def _describe(pred: list[Any]) -> str:
    # Prefer math-verify's own string fallback: str() of a huge sympy object can itself be very slow.
    text = next((p for p in pred if isinstance(p, str)), None)
    return (text if text is not None else type(pred[0]).__name__)[:MAX_INFO_CHARS]


def _failure(reason: str) -> Score:
    return Score(reward=0.0, correct=False, info={"reason": reason[:MAX_INFO_CHARS]})


def _compare(gold: list[Any], pred: list[Any], timeout: int | None) -> tuple[bool, str | None]:
    """(equivalent, first error). Pairs are tried one by one, as math-verify does, but an error or timeout on one
    (gold, pred) pair is recorded instead of hidden, and does not stop the other pairs from matching."""
    error: str | None = None
    for g, p in product(gold, pred):
        try:
            if mv_verify(g, p, timeout_seconds=timeout, raise_on_error=True):
                return True, None
        except TimeoutException:  # a BaseException subclass, so `except Exception` would miss it
            error = error or "math-verify timeout"
        except Exception as e:  # noqa: BLE001 - a sympy failure on model output means "not shown equal"
            error = error or f"math-verify error: {type(e).__name__}: {e}"
    return False, error


def verify(prompt: Prompt, completion: str) -> Score:
    """Score `completion` against the math answer `prompt.answer` (see the module docstring)."""
    gold = _parse_gold(prompt)  # gold first: math-verify's verify(gold, pred) is not symmetric
    timeout = _timeout_s()
    try:
        pred = mv_parse(completion[-MAX_COMPLETION_CHARS:], parsing_timeout=timeout, raise_on_error=True)
    except TimeoutException:
        return _failure("math-verify timeout")
    except Exception as e:  # noqa: BLE001 - any parser failure on model output is a wrong answer
        return _failure(f"math-verify error: {type(e).__name__}: {e}")
    if not pred:
        return _failure("no answer found")
    ok, error = _compare(gold, pred, timeout)
    info = {"pred": _describe(pred)} | ({"reason": error[:MAX_INFO_CHARS]} if error else {})
    return Score(reward=1.0 if ok else 0.0, correct=ok, info=info)
