"""Verifiers: plain functions `verify(prompt, completion) -> Score` (DESIGN.md §3).

`VERIFIERS` is the explicit table of built-ins; `load_verifier` resolves a config value, which is either a
built-in name or a user plug-in "my_pkg.my_mod:my_fn".

>>> sorted(VERIFIERS)
['code', 'countdown', 'exact', 'math', 'numeric']
"""

from __future__ import annotations

from typing import Callable

from rlpt.types import Prompt, Score
from rlpt.verifiers import code, countdown, exact, math
from rlpt.verifiers.plugin import VerifierLoadError, load_plugin

Verifier = Callable[[Prompt, str], Score]

VERIFIERS: dict[str, Verifier] = {
    "math": math.verify,
    "numeric": exact.numeric,
    "exact": exact.exact,
    "countdown": countdown.verify,
    "code": code.verify,
}


def load_verifier(spec: str) -> Verifier:
    """A built-in by name ("math"), or a plug-in by "module:function"; VerifierLoadError otherwise."""
    if spec in VERIFIERS:
        return VERIFIERS[spec]
    if ":" in spec:
        return load_plugin(spec)
    raise VerifierLoadError(
        f"unknown verifier {spec!r}: use one of {sorted(VERIFIERS)} or a plug-in 'my_pkg.my_mod:my_fn'"
    )


__all__ = ["VERIFIERS", "Verifier", "VerifierLoadError", "load_plugin", "load_verifier"]
