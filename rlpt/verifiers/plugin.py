"""Loads a user verifier given as "my_pkg.my_mod:my_fn" and adapts its return value to a Score.

A plug-in is any callable taking (prompt, completion). It may return a Score, a bool (correct or not) or a real
number (a graded reward, correct=None). Everything is checked at load time where possible (spec, import, attribute,
callable, signature) so a typo in a config fails before any GPU time is spent; the return type can only be checked
per call, and a wrong one raises TypeError naming the plug-in rather than being coerced.

Deviations: `numbers.Real` values (numpy scalars, Fraction) count as numbers; a NaN/inf reward raises ValueError,
since it would poison every advantage in its group.

>>> fn = load_plugin("operator:eq")  # a builtin taking two positional args; returns a bool
>>> fn.__name__
'plugin:operator:eq'
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable

from rlpt.errors import SetupError
from rlpt.plugins import import_attr
from rlpt.types import Prompt, Score

Verifier = Callable[[Prompt, str], Score]


class VerifierLoadError(SetupError):
    """A verifier spec could not be turned into a callable verifier; the message says which part failed."""


def _check_signature(spec: str, fn: Callable[..., Any]) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some C callables expose no signature; the first call will tell
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
    required_kwonly = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    required_extra = [p.name for p in positional[2:] if p.default is p.empty]
    if (len(positional) < 2 and not has_varargs) or required_extra or required_kwonly:
        raise VerifierLoadError(
            f"verifier plug-in {spec!r} has signature {sig}: it must accept (prompt, completion) positionally, "
            "with defaults for any further parameters"
        )


def _to_score(spec: str, value: object) -> Score:
    if isinstance(value, Score):
        return value
    if isinstance(value, bool):  # before numbers: bool is an int subclass
        return Score(reward=1.0 if value else 0.0, correct=value)
    if isinstance(value, numbers.Real):
        reward = float(value)
        if not math.isfinite(reward):
            raise ValueError(f"verifier plug-in {spec!r} returned a non-finite reward {reward}")
        return Score(reward=reward, correct=None)
    raise TypeError(
        f"verifier plug-in {spec!r} returned {type(value).__module__}.{type(value).__qualname__}; "
        "expected rlpt.types.Score, bool, float or int"
    )


def load_plugin(spec: str) -> Verifier:
    """Import `spec` ("pkg.mod:fn"), check it, and return a verifier that always returns a Score."""
    fn = import_attr(spec, "verifier", "my_pkg.my_mod:my_fn", VerifierLoadError)
    if not callable(fn):
        raise VerifierLoadError(f"verifier plug-in {spec!r} is a {type(fn).__name__}, not a callable")
    _check_signature(spec, fn)

    def plugin_verifier(prompt: Prompt, completion: str) -> Score:
        return _to_score(spec, fn(prompt, completion))

    plugin_verifier.__name__ = plugin_verifier.__qualname__ = f"plugin:{spec}"
    return plugin_verifier
