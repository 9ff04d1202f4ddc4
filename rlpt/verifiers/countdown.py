"""Countdown: combine the given numbers with + - * / and parentheses to reach the target.

The prompt's meta holds `numbers: list[int]` and `target: int` (`answer` is str(target) and is not read).
The expression is the text inside the LAST <answer>...</answer> of the completion when both tags are present, else
the first non-empty line. It is parsed with `ast` (never eval/exec) and evaluated exactly with Fraction.
Reward 1.0 iff it reaches the target; otherwise 0.0 with info["reason"].

Rules and deviations (as in TinyZero's countdown reward, plus):
- Each given number may be used at most as often as it appears in `numbers`; a subset is allowed (not all numbers
  need be used), which keeps the task solvable for every generated instance.
- Only binary + - * / and parentheses: no unary minus ("-3"), no ** or //, no decimals, no names.
- A trailing "= ..." is ignored (models often write "(1+2)*3 = 9"); only the left side is evaluated and scored.
- "×", "÷" and the unicode minus "−" are read as *, / and -.
- Expressions longer than MAX_EXPR_CHARS are rejected: a real answer is short, and it bounds parser work.

>>> from rlpt.types import Prompt
>>> p = Prompt(uid="c", text="Use 3 5 7 to make 22", answer="22", meta={"numbers": [3, 5, 7], "target": 22})
>>> verify(p, "Let me think... 3*5=15, 15+7=22. <answer>3*5+7</answer>")
Score(reward=1.0, correct=True, info={'expr': '3*5+7', 'value': '22'})
>>> verify(p, "<answer>3+5+7</answer>")
Score(reward=0.0, correct=False, info={'expr': '3+5+7', 'value': '15'})
>>> verify(p, "<answer>(7 + 7) * 5</answer>").info["reason"]
'uses number not provided: 7 (more often than given)'
>>> verify(p, "<answer>-3 + 5 * 5</answer>").info["reason"]
'disallowed syntax: USub'
>>> q = Prompt(uid="d", text="Use 2 4 4 to make 1", answer="1", meta={"numbers": [2, 4, 4], "target": 1})
>>> verify(q, "<answer>2 / (4 - 4)</answer>").info["reason"]
'division by zero'
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from rlpt.types import Prompt, Score

MAX_EXPR_CHARS = 200
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/()\s]*")
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_UNICODE_OPS = str.maketrans({"×": "*", "÷": "/", "\u2212": "-"})


class _Reject(Exception):
    """The completion's expression is invalid; the message is the reason reported in Score.info."""


def extract_expression(completion: str) -> str:
    """Inside the last <answer>...</answer>, else the first non-empty line; left of any "=".

    >>> extract_expression("<answer>1+2</answer> then <answer> (3*4) = 12 </answer>")
    '(3*4)'
    """
    # rfind, not a regex: a lazy .*? scan is quadratic on a completion full of unclosed <answer> tags.
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    if start >= 0:
        text = completion[start + len("<answer>") : end]
    else:
        text = next((line for line in completion.splitlines() if line.strip()), "")
    return text.split("=", 1)[0].strip()


def _parse(expr: str) -> ast.expr:
    if not expr:
        raise _Reject("no expression")
    if len(expr) > MAX_EXPR_CHARS:
        raise _Reject(f"expression longer than {MAX_EXPR_CHARS} chars")
    expr = expr.translate(_UNICODE_OPS)
    if not _ALLOWED_CHARS.fullmatch(expr):
        bad = sorted({c for c in expr if not _ALLOWED_CHARS.fullmatch(c)})
        raise _Reject(f"invalid characters: {''.join(bad)!r}")
    try:
        return ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _Reject(f"not a valid expression: {type(e).__name__}") from e


def _leaves(node: ast.expr) -> list[int]:
    """The integer literals of `node`, after checking that it only holds allowed syntax."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        return _leaves(node.left) + _leaves(node.right)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value]
    what = type(node.op).__name__ if isinstance(node, (ast.BinOp, ast.UnaryOp)) else type(node).__name__
    raise _Reject(f"disallowed syntax: {what}")


def _check_numbers(used: list[int], given: list[int]) -> None:
    available = Counter(given)
    for n, count in Counter(used).items():
        if n not in available:
            raise _Reject(f"uses number not provided: {n}")
        if count > available[n]:
            raise _Reject(f"uses number not provided: {n} (more often than given)")


def _evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    assert isinstance(node, ast.BinOp)  # guaranteed by _leaves
    left, right = _evaluate(node.left), _evaluate(node.right)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    if right == 0:
        raise _Reject("division by zero")
    return left / right


def _task(prompt: Prompt) -> tuple[list[int], int]:
    try:
        return [int(n) for n in prompt.meta["numbers"]], int(prompt.meta["target"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"countdown verifier: prompt {prompt.uid!r} needs meta numbers: list[int], target: int") from e


def verify(prompt: Prompt, completion: str) -> Score:
    """Reward 1.0 iff the completion's expression uses only the given numbers and equals the target."""
    numbers, target = _task(prompt)
    expr = extract_expression(completion)
    try:
        node = _parse(expr)
        _check_numbers(_leaves(node), numbers)
        value = _evaluate(node)
    except _Reject as e:
        return Score(reward=0.0, correct=False, info={"reason": str(e), "expr": expr[:MAX_EXPR_CHARS]})
    ok = value == target
    return Score(reward=1.0 if ok else 0.0, correct=ok, info={"expr": expr, "value": str(value)})
