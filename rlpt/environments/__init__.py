"""Environments: the multi-turn generalisation of a verifier (issue 17). One instance per trajectory.

Contract. `reset(prompt)` starts a trajectory and returns the first observation, appended after the prompt, or
None when the prompt itself is the first turn. Then, for every model turn, `step(model_turn_text)` returns an
`EnvStep(observation, reward, done, info)`: while `done` is False the observation is appended as the next
tool/user turn and the model speaks again; `done` ends the trajectory (its observation may then be None).

Who enforces what:
- the turn limit and the total token budget per trajectory are enforced by the rollout side, not here: an
  environment never has to count tokens, and a trajectory cut by either limit simply ends without `done`;
- the final reward may come from the environment (the last `EnvStep.reward`) or from the configured reward terms
  on the final answer; which one is the rollout config's choice, not the environment's;
- an environment that raises or hangs ends that trajectory with an error row; the pool that runs environments
  (same isolation and timeouts as verifiers) enforces that, so environments here raise plainly and never catch
  their own faults into a made-up reward.

Selection: `ENVIRONMENTS` is the explicit table of built-ins; `load_environment` resolves a config value, a
built-in name or a plug-in "my_pkg.my_mod:MyEnv" (the class, or any zero-argument callable, is the factory).

>>> sorted(ENVIRONMENTS)
['python', 'retry']
>>> EnvStep(observation="Wrong. Try again: 3+4=", reward=0.0, done=False)
EnvStep(observation='Wrong. Try again: 3+4=', reward=0.0, done=False, info={})
"""

from __future__ import annotations

import inspect
from typing import Any

from rlpt.environments.base import Environment, EnvFactory, EnvironmentLoadError, EnvStep
from rlpt.environments.python_tool import PythonTool
from rlpt.environments.retry import RetryWithFeedback
from rlpt.plugins import import_attr

ENVIRONMENTS: dict[str, EnvFactory] = {
    "retry": RetryWithFeedback,
    "python": PythonTool,
}


def _check_factory(spec: str, factory: Any) -> None:
    """Fail at load time, not mid-run: callable with no arguments and, for a class, has reset and step."""
    if not callable(factory):
        raise EnvironmentLoadError(f"environment plug-in {spec!r} is a {type(factory).__name__}, not a callable")
    if isinstance(factory, type):
        missing = [name for name in ("reset", "step") if not callable(getattr(factory, name, None))]
        if missing:
            raise EnvironmentLoadError(f"environment plug-in {spec!r}: class has no method(s) {missing}")
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # some C callables expose no signature; the first call will tell
    required = [p.name for p in sig.parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise EnvironmentLoadError(
            f"environment plug-in {spec!r} has signature {sig}: it must be callable with no arguments "
            f"(give defaults to {required})"
        )


def load_environment(spec: str) -> EnvFactory:
    """A built-in by name ("retry"), or a plug-in by "module:Class"; EnvironmentLoadError otherwise."""
    if spec in ENVIRONMENTS:
        return ENVIRONMENTS[spec]
    if ":" not in spec:
        raise EnvironmentLoadError(
            f"unknown environment {spec!r}: use one of {sorted(ENVIRONMENTS)} or a plug-in 'my_pkg.my_mod:MyEnv'"
        )
    factory = import_attr(spec, "environment", "my_pkg.my_mod:MyEnv", EnvironmentLoadError)
    _check_factory(spec, factory)
    return factory  # type: ignore[no-any-return]


__all__ = ["ENVIRONMENTS", "EnvFactory", "EnvStep", "Environment", "EnvironmentLoadError", "PythonTool",
           "RetryWithFeedback", "load_environment"]
