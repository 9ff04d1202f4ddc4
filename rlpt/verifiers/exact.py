"""String and number answers: `exact` (whole completion equals the answer) and `numeric` (first number).

`exact`: both sides are stripped of surrounding whitespace and compared; meta "case_sensitive" (default True)
set to False compares casefolded strings. Nothing else is normalised (no punctuation or inner-space folding).

`numeric`: takes the FIRST number in the completion, not the last. Tiny models trained from scratch on arithmetic
emit the answer first and then junk (often more digits), so the first number is the one the model commits to;
for chatty models that reason before answering, use the `math` verifier instead. Understood forms: "-12", "3.5",
"1,234" (comma thousands groups of exactly three digits), a unicode minus "−" (U+2212); not exponents ("1e5"
reads as 1). Only the first `MAX_NUMBER_SEARCH_CHARS` characters are searched: a committed answer is near the start,
and the cap bounds the work on runaway completions. The gold is `float(prompt.answer)`; the tolerance is absolute,
meta "tol" (default 1e-6).

>>> from rlpt.types import Prompt
>>> exact(Prompt(uid="e", text="Capital of France?", answer="Paris"), "  Paris\\n")
Score(reward=1.0, correct=True, info={'pred': 'Paris'})
>>> exact(Prompt(uid="e", text="?", answer="Paris", meta={"case_sensitive": False}), "PARIS")
Score(reward=1.0, correct=True, info={'pred': 'PARIS'})
>>> numeric(Prompt(uid="n", text="17+25=", answer="42"), "42 7 7 7 +")
Score(reward=1.0, correct=True, info={'pred': 42.0})
>>> numeric(Prompt(uid="n", text="5-12=", answer="-7"), "−7")
Score(reward=1.0, correct=True, info={'pred': -7.0})
>>> numeric(Prompt(uid="n", text="5-12=", answer="-7"), "seven")
Score(reward=0.0, correct=False, info={'reason': 'no number found'})
"""

from __future__ import annotations

import math
import re

from rlpt.types import Prompt, Score

MAX_NUMBER_SEARCH_CHARS = 4000
MAX_INFO_CHARS = 200  # info is logged and stored with every rollout
# Thousands groups first so "1,234" is one number; a lone "1,2" reads as 1. ASCII digits only ([0-9], not \d).
_NUMBER = re.compile(r"[-\u2212]?(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?")


def _require_answer(prompt: Prompt, verifier: str) -> str:
    if prompt.answer is None:
        raise ValueError(f"{verifier} verifier: prompt {prompt.uid!r} has no answer")
    return prompt.answer


def exact(prompt: Prompt, completion: str) -> Score:
    """Reward 1.0 when the stripped completion equals the stripped answer (see the module docstring)."""
    gold = _require_answer(prompt, "exact").strip()
    pred = completion.strip()
    if not bool(prompt.meta.get("case_sensitive", True)):
        gold, pred = gold.casefold(), pred.casefold()
    ok = pred == gold
    return Score(reward=1.0 if ok else 0.0, correct=ok, info={"pred": completion.strip()[:MAX_INFO_CHARS]})


def first_number(text: str) -> float | None:
    """The first number in `text[:MAX_NUMBER_SEARCH_CHARS]`, or None.

    >>> first_number("x = 1,234.5 or 7"), first_number("−3 apples"), first_number("none")
    (1234.5, -3.0, None)
    """
    match = _NUMBER.search(text[:MAX_NUMBER_SEARCH_CHARS])
    if match is None:
        return None
    return float(match.group().replace("\u2212", "-").replace(",", ""))


def _gold_number(prompt: Prompt) -> float:
    answer = _require_answer(prompt, "numeric")
    try:
        return float(answer.replace("\u2212", "-").replace(",", ""))
    except ValueError as e:
        raise ValueError(f"numeric verifier: answer {answer!r} of prompt {prompt.uid!r} is not a number") from e


def numeric(prompt: Prompt, completion: str) -> Score:
    """Reward 1.0 when the first number of the completion is within meta "tol" of the answer."""
    gold = _gold_number(prompt)
    tol = float(prompt.meta.get("tol", 1e-6))
    pred = first_number(completion)
    if pred is None:
        return Score(reward=0.0, correct=False, info={"reason": "no number found"})
    ok = math.isfinite(pred) and abs(pred - gold) <= tol  # a 400-digit float overflows to inf: never correct
    return Score(reward=1.0 if ok else 0.0, correct=ok, info={"pred": pred})
