"""The one verifier of the benchmark, in the shape each system takes a custom reward.

Correct (reward 1) when the completion starts with the sum: its leading integer (after optional spaces) equals the
answer, so "7" and "7+" are right for "3+4=", "71" is not. Standard library only: rlpt imports it as a verifier
plug-in (`verifier.name=arith_verifier:rlpt_score`, this folder on PYTHONPATH), TRL's venv as a reward function.
"""

from __future__ import annotations

import re
from typing import Any

_LEADING_INT = re.compile(r"\s*(-?\d+)")


def is_correct(completion: str, answer: str) -> bool:
    m = _LEADING_INT.match(completion)
    return m is not None and m.group(1) == answer.strip()


def rlpt_score(prompt: Any, completion: str) -> bool:
    """rlpt plug-in: (rlpt.types.Prompt, completion text) -> correct or not (reward 1.0 / 0.0)."""
    return is_correct(completion, prompt.answer)


def trl_reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """TRL reward function: the dataset's `answer` column arrives as a keyword, one entry per completion."""
    return [1.0 if is_correct(c, a) else 0.0 for c, a in zip(completions, answer, strict=True)]
