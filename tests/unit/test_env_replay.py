"""The environment pool's step (rlpt.environments.replay) and the config checks of multi-turn runs."""

from __future__ import annotations

import pytest

from rlpt.config import ConfigError, load_config
from rlpt.environments import EnvironmentLoadError, EnvStep
from rlpt.environments.replay import EnvStepper
from rlpt.prepare import check_environment
from rlpt.types import Prompt

P = Prompt(uid="a0", text="3+4=", answer="7")


def test_a_trajectory_stepped_in_order_is_never_replayed_and_one_seen_elsewhere_is():
    stepper = EnvStepper("retry", {"max_attempts": 3})
    assert stepper(P, ()).info["observation"] is None
    assert stepper(P, ("1",)).info["env"]["attempt"] == 1
    assert stepper(P, ("1", "2")).info["env"]["attempt"] == 2 and stepper.replays == 0
    fresh = EnvStepper("retry", {"max_attempts": 3})  # another worker: it never saw this trajectory
    s = fresh(P, ("1", "2", "7"))
    assert (s.reward, s.correct, s.info["done"], s.info["env"]["attempt"]) == (1.0, True, True, 3)
    assert fresh.replays == 1
    # the same call on the first worker: its kept environment is stepped (no replay), same result
    assert stepper(P, ("1", "2", "7")).info["env"] == s.info["env"] and stepper.replays == 0


class Counter:
    """Not deterministic in (prompt, turns): only the first instance ever made (the one EnvStepper makes at load)
    goes on; the replay's instance ends at its first step."""

    made = 0

    def __init__(self):
        Counter.made += 1
        self.n = Counter.made

    def reset(self, prompt):
        return None

    def step(self, turn):
        return EnvStep(observation=None if self.n > 1 else "again", reward=0.0, done=self.n > 1)


def test_a_replay_that_ends_early_says_the_environment_is_not_deterministic(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "counter_env", type(sys)("counter_env"))
    sys.modules["counter_env"].Counter = Counter
    Counter.made = 0
    with pytest.raises(RuntimeError, match="is the environment deterministic"):
        EnvStepper("counter_env:Counter")(P, ("x", "y"))


def test_environment_settings_are_checked_before_anything_starts():
    ok = load_config(None, ["environment.name=retry", "environment.args={max_attempts: 3}"])
    check_environment(ok)
    with pytest.raises(ConfigError, match=r"environment.args \{'max_tries': 3\} for 'retry'.*max_tries"):
        check_environment(load_config(None, ["environment.name=retry", "environment.args={max_tries: 3}"]))
    with pytest.raises(ConfigError, match="max_attempts must be >= 1"):
        check_environment(load_config(None, ["environment.name=retry", "environment.args={max_attempts: 0}"]))
    with pytest.raises(EnvironmentLoadError, match="unknown environment 'shell'"):
        check_environment(load_config(None, ["environment.name=shell"]))
    with pytest.raises(EnvironmentLoadError, match="cannot import module 'no_such_pkg'"):
        check_environment(load_config(None, ["environment.name=no_such_pkg:Env"]))
    with pytest.raises(ConfigError, match="multi-turn rollouts run in the online loop; algorithm 'dpo'"):
        check_environment(load_config(None, ["environment.name=retry", "algorithm.name=dpo"]))
    with pytest.raises(ValueError, match="observation_role"):
        load_config(None, ["environment.name=retry", "environment.observation_role=system"])
