"""Tiny verifier plug-ins for tests/unit/test_verifiers.py, loaded as "tests.unit.plugins_fixture:<name>"."""

from __future__ import annotations

from rlpt.types import Prompt, Score

NOT_CALLABLE = 3


def float_reward(prompt: Prompt, completion: str) -> float:
    return 0.75 if prompt.answer in completion else 0.25


def int_reward(prompt: Prompt, completion: str) -> int:
    return 1 if prompt.answer in completion else 0


def bool_reward(prompt: Prompt, completion: str) -> bool:
    return completion.strip() == prompt.answer


def score_reward(prompt: Prompt, completion: str) -> Score:
    return Score(reward=0.5, correct=True, info={"len": len(completion)})


def with_defaults(prompt: Prompt, completion: str, scale: float = 2.0) -> float:
    return scale * float(prompt.answer in completion)


class Scorer:
    """A callable instance and a nested attribute ("mod:Scorer.static")."""

    def __call__(self, prompt: Prompt, completion: str) -> bool:
        return prompt.answer in completion

    @staticmethod
    def static(prompt: Prompt, completion: str) -> float:
        return 0.125


scorer_instance = Scorer()


def one_arg(prompt: Prompt) -> float:
    return 1.0


def three_required(prompt: Prompt, completion: str, extra: int) -> float:
    return 1.0


def required_kwonly(prompt: Prompt, completion: str, *, key: str) -> float:
    return 1.0


def returns_str(prompt: Prompt, completion: str) -> str:
    return "1.0"


def returns_none(prompt: Prompt, completion: str) -> None:
    return None


def returns_nan(prompt: Prompt, completion: str) -> float:
    return float("nan")
