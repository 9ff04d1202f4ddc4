"""The environment contract (see rlpt/environments/__init__.py for who enforces what): `EnvStep`, `Environment`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from rlpt.errors import SetupError
from rlpt.types import Prompt


@dataclass(frozen=True)
class EnvStep:
    """What one `Environment.step` returns. `observation` is None only when `done`."""

    observation: str | None
    reward: float
    done: bool
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.observation is not None and not isinstance(self.observation, str):
            raise TypeError(f"EnvStep: observation is a {type(self.observation).__name__}, expected str or None")
        if self.observation is None and not self.done:
            raise ValueError("EnvStep: observation is None but done is False: the model would get no next turn")
        if not math.isfinite(self.reward):  # a NaN would poison every advantage in its group
            raise ValueError(f"EnvStep: reward {self.reward} is not finite")


@runtime_checkable
class Environment(Protocol):
    """One trajectory's environment (see the module docstring for the contract)."""

    def reset(self, prompt: Prompt) -> str | None: ...

    def step(self, model_turn: str) -> EnvStep: ...


EnvFactory = Callable[[], Environment]


class EnvironmentLoadError(SetupError):
    """An environment spec could not be turned into a factory; the message names the spec and what failed."""
