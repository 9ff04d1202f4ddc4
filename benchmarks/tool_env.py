"""The RevealDigit task (tests/envs.py) with a tool that takes `delay_s` per step: the stand-in for a real tool
call (a sandboxed program, a search) in benchmarks/multi_turn.py. Loaded as `benchmarks.tool_env:SlowReveal`."""

import time

from rlpt.environments import EnvStep
from tests.envs import RevealDigit


class SlowReveal(RevealDigit):
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def step(self, model_turn: str) -> EnvStep:
        time.sleep(self.delay_s)
        return super().step(model_turn)
