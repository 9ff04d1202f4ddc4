"""How the environment pool runs environments: a stateless call, (prompt, model turns so far) -> the last step.

Why stateless: the pool's worker processes can be killed (a hang), die (a crash) or be replaced at any time, and
any worker may get any trajectory's next turn. So one call carries the whole history and the worker rebuilds the
environment by replaying it: `reset(prompt)`, then `step(turn)` for each earlier turn, then the new turn. A worker
keeps the environment it just stepped (keyed by prompt uid and the turns it has seen), so in the common case the
next turn of that trajectory is one `step`, not a replay. The price is one rule of the contract: **an environment
must be a deterministic function of (prompt, model turns so far)**; a replay after a fault then reaches the same
state. (The built-ins are; a plug-in drawing random numbers must seed them from the prompt.)

A kept environment is found by the prompt's whole content, the trajectory's sample index and its turns, so two
prompts sharing a uid (an evaluation file's rows and the training file's) never share an environment. The pool sends
a trajectory to the same worker every turn (`shard_of`), and allows a call as many step timeouts as it may replay
steps (`item_cost`).

The call returns a `Score` so the verifier pool's isolation, timeouts and error rows apply unchanged
(rlpt.isolation): reward = the step's reward, correct = its info["correct"] when that is a bool, info =
{"observation": str | None, "done": bool, "env": the step's info}. With no turns yet, the call is the reset:
{"observation": reset's return, "done": False} and reward 0.0.

>>> from rlpt.types import Prompt
>>> stepper = EnvStepper("retry")
>>> p = Prompt(uid="a0", text="3+4=", answer="7")
>>> stepper(p, (0, ())).info
{'observation': None, 'done': False, 'env': {}}
>>> s = stepper(p, (0, ("8",)))
>>> s.reward, s.correct, s.info["observation"], s.info["done"]
(0.0, False, 'Wrong. Try again: 3+4=', False)
>>> s = stepper(p, (0, ("8", "7")))
>>> s.reward, s.correct, s.info["done"], stepper.replays
(1.0, True, True, 0)
"""

from __future__ import annotations

import pickle
import zlib
from collections import OrderedDict
from typing import Any, Mapping

from rlpt.environments import Environment, load_environment
from rlpt.environments.base import EnvStep
from rlpt.types import Prompt, Score

# What the environment pool gets per trajectory: its prompt, and (its sample index, the model turns so far).
EnvItem = tuple[Prompt, tuple[int, tuple[str, ...]]]
_Key = tuple[bytes, int, tuple[str, ...]]


def prompt_key(prompt: Prompt) -> bytes:
    """The prompt's whole content, for cache keys: uids are unique within one data file only (an eval.path file
    may reuse the training file's), and environments may read any field (meta, messages)."""
    return pickle.dumps(prompt, pickle.HIGHEST_PROTOCOL)


def shard_of(item: EnvItem) -> int:
    """The environment worker of a trajectory (ScorePool.shard_of): the same one every turn, so its environment
    is stepped where it is kept instead of replayed."""
    prompt, (index, _) = item
    return zlib.crc32(prompt.uid.encode()) + index


def item_cost(item: EnvItem) -> int:
    """How many per-step timeouts the worker process allows this call (rlpt.isolation): a replay steps every earlier
    turn again, so a call may take as many steps as the trajectory has turns (at least 1: the reset)."""
    return max(1, len(item[1][1]))


class EnvStepper:
    """(prompt, turns) -> Score of the last step (the module docstring); `replays` counts rebuilt environments."""

    def __init__(self, spec: str, args: Mapping[str, Any] | None = None, cache_size: int = 4096) -> None:
        self.factory = load_environment(spec)
        self.args = dict(args or {})
        self.cache_size = cache_size
        self.replays = 0
        self._cache: OrderedDict[_Key, Environment] = OrderedDict()
        self.make()  # a constructor that rejects `args` fails here, at load time, not on the first trajectory

    def make(self) -> Environment:
        return self.factory(**self.args)

    def __call__(self, prompt: Prompt, call: tuple[int, tuple[str, ...]]) -> Score:
        index, turns = call
        key = prompt_key(prompt)
        if not turns:
            env = self.make()
            first = env.reset(prompt)
            if first is not None and not isinstance(first, str):
                raise TypeError(f"environment reset() returned {type(first).__name__}, expected str or None")
            self._keep((key, index, ()), env)
            return Score(0.0, None, {"observation": first, "done": False, "env": {}})
        env = self._cache.pop((key, index, turns[:-1]), None)
        if env is None:
            env = self._replay(prompt, turns[:-1])
        step = env.step(turns[-1])
        if not isinstance(step, EnvStep):
            raise TypeError(f"environment step() returned {type(step).__name__}, expected EnvStep")
        if not step.done:
            self._keep((key, index, turns), env)
        correct = step.info.get("correct")
        return Score(float(step.reward), correct if isinstance(correct, bool) else None,
                     {"observation": step.observation, "done": step.done, "env": dict(step.info)})

    def _replay(self, prompt: Prompt, turns: tuple[str, ...]) -> Environment:
        self.replays += 1
        env = self.make()
        env.reset(prompt)
        for turn in turns:
            if env.step(turn).done:
                raise RuntimeError(f"environment replay of {prompt.uid}: the trajectory ended before its last turn "
                                   f"(is the environment deterministic in (prompt, turns)?)")
        return env

    def _keep(self, key: _Key, env: Environment) -> None:
        self._cache[key] = env
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)  # the oldest: a trajectory that ended elsewhere or was abandoned


def load_env_stepper(spec: str, args: Mapping[str, Any] | None = None) -> EnvStepper:
    """The loader the environment pool's isolated worker process calls (rlpt.isolation.IsolatedScorer)."""
    return EnvStepper(spec, args)
