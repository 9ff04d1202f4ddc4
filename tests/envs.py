"""Environment plug-ins for the multi-turn tests (loaded as 'tests.envs:Class', like a user's own module).

`RevealDigit` is the learnable task: the prompt ("?") says nothing about the answer; the first model turn gets the
question back as the observation (a digit), and the second turn is right when it repeats that digit. A single-turn
policy can only guess (at best 1 in 10: the digits are uniform); a multi-turn policy can learn to copy.
The others misbehave on purpose: raise, hang, return a huge observation, or crash their process.
"""

from __future__ import annotations

import os
import time

from rlpt.environments import EnvStep
from rlpt.types import Prompt


class RevealDigit:
    def reset(self, prompt: Prompt) -> str | None:
        self.prompt, self.turn = prompt, 0
        return None

    def step(self, model_turn: str) -> EnvStep:
        self.turn += 1
        if self.turn == 1:
            return EnvStep(observation=str(self.prompt.meta["question"]), reward=0.0, done=False, info={"turn": 1})
        correct = model_turn.strip() == str(self.prompt.answer)
        return EnvStep(observation=None, reward=float(correct), done=True, info={"correct": correct, "turn": 2})


class _Misbehaves:
    """Misbehaves on the first step of prompts whose uid ends in '0' (so one trajectory group is hit, others not);
    otherwise: done at once with reward 1."""

    def reset(self, prompt: Prompt) -> str | None:
        self.prompt = prompt
        return None

    def step(self, model_turn: str) -> EnvStep:
        if self.prompt.uid.endswith("0"):
            return self.misbehave()
        return EnvStep(observation=None, reward=1.0, done=True)

    def misbehave(self) -> EnvStep:
        raise NotImplementedError


class Raises(_Misbehaves):
    def misbehave(self) -> EnvStep:
        raise ValueError("environment bug")


class Hangs(_Misbehaves):
    def misbehave(self) -> EnvStep:
        time.sleep(3600)
        raise AssertionError("unreachable")


class Crashes(_Misbehaves):
    def misbehave(self) -> EnvStep:
        os._exit(3)


class HugeObservation(_Misbehaves):
    def misbehave(self) -> EnvStep:
        return EnvStep(observation="x" * 100_000, reward=0.0, done=False)


class ResetRaises(_Misbehaves):
    def reset(self, prompt: Prompt) -> str | None:
        if prompt.uid.endswith("0"):
            raise RuntimeError("reset failed")
        return super().reset(prompt)
