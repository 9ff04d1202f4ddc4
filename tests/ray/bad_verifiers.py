"""Plug-in verifiers that misbehave, for the fault tests (loaded as tests.ray.bad_verifiers:NAME)."""

import time

from rlpt.types import Score


def raises(prompt, completion):
    raise RuntimeError(f"verifier bug on {prompt.uid}")


def hangs_on_some(prompt, completion):
    """Hangs (past any sane timeout) on prompts whose answer is '4'; scores the others like `numeric`."""
    if prompt.answer == "4":
        time.sleep(3600)
    return Score(reward=1.0 if completion.strip().startswith(prompt.answer) else 0.0, correct=None)
