"""The environment pool's step (rlpt.environments.replay) and the config checks of multi-turn runs."""

from __future__ import annotations

import pytest

from rlpt.config import ConfigError, load_config
from rlpt.environments import EnvironmentLoadError, EnvStep
from rlpt.environments.replay import EnvStepper
from rlpt.prepare import check_environment
from rlpt.types import Prompt

pytestmark = pytest.mark.unit

P = Prompt(uid="a0", text="3+4=", answer="7")


def test_a_trajectory_stepped_in_order_is_never_replayed_and_one_seen_elsewhere_is():
    stepper = EnvStepper("retry", {"max_attempts": 3})
    assert stepper(P, (0, ())).info["observation"] is None
    assert stepper(P, (0, ("1",))).info["env"]["attempt"] == 1
    assert stepper(P, (0, ("1", "2"))).info["env"]["attempt"] == 2 and stepper.replays == 0
    fresh = EnvStepper("retry", {"max_attempts": 3})  # another worker: it never saw this trajectory
    s = fresh(P, (0, ("1", "2", "7")))
    assert (s.reward, s.correct, s.info["done"], s.info["env"]["attempt"]) == (1.0, True, True, 3)
    assert fresh.replays == 1
    # the same call on the first worker: its kept environment is stepped (no replay), same result
    assert stepper(P, (0, ("1", "2", "7"))).info["env"] == s.info["env"] and stepper.replays == 0


def test_prompts_sharing_a_uid_never_share_an_environment():
    """An evaluation file's row 0 and the training file's row 0 may have the same uid: the cache tells them apart
    by their whole content, and the trajectory by its sample index."""
    a, b = Prompt(uid="0", text="3+4=", answer="7"), Prompt(uid="0", text="1+1=", answer="2")
    stepper = EnvStepper("retry", {"max_attempts": 3})
    for p in (a, b):
        stepper(p, (0, ()))
        stepper(p, (0, ("8",)))
    s = stepper(b, (0, ("8", "7")))  # b's answer is 2: a's kept environment would have said correct
    assert (s.reward, s.correct) == (0.0, False) and stepper.replays == 0


def test_a_non_string_observation_is_refused_where_the_environment_returns_it():
    with pytest.raises(TypeError, match="observation is a int, expected str or None"):
        EnvStep(observation=3, reward=0.0, done=False)


def test_the_environment_pool_sends_a_trajectory_to_the_same_worker_every_turn():
    from actors.verifier import ScorePool
    from rlpt.environments.replay import shard_of

    pool = ScorePool(["w0", "w1", "w2"], ["a", "b", "c"], lambda n: 1.0, 0.0, shard_of=shard_of)
    items = [(Prompt(uid=f"p{i}", text="q"), (j, ())) for i in range(5) for j in range(2)]
    plan = pool._plan(items)
    where = {i: k for k, at in plan.items() for i in at}
    assert sorted(where) == list(range(10))
    later = pool._plan(items[3:])  # a later turn: fewer trajectories left, each still on its worker
    assert all(where[i + 3] == k for k, at in later.items() for i in at)
    contiguous = ScorePool(["w0", "w1"], ["a", "b"], lambda n: 1.0, 0.0)._plan(items)
    assert contiguous == {0: [0, 1, 2, 3, 4], 1: [5, 6, 7, 8, 9]}


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
        EnvStepper("counter_env:Counter")(P, (0, ("x", "y")))


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
    with pytest.raises(ConfigError, match="rollout.partial_tokens with an environment"):
        check_environment(load_config(None, ["environment.name=retry", "rollout.max_staleness=1",
                                             "rollout.partial_tokens=4"]))
    with pytest.raises(ConfigError, match=r"reward.terms \['acc'\] would never score"):
        check_environment(load_config(None, ["environment.name=retry", "reward.terms=[{name: acc, kind: rule}]"]))
    check_environment(load_config(None, ["environment.name=retry", "reward.terms=[{name: acc, kind: rule}]",
                                         "environment.reward=terms"]))
    with pytest.raises(ValueError, match="observation_role"):
        load_config(None, ["environment.name=retry", "environment.observation_role=system"])


def test_a_chat_template_that_refuses_the_observation_role_fails_before_start_up():
    from rlpt.prepare import check_observation_format

    class Tok:
        chat_template = "(a template without a tool role)"
        all_special_ids = []

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
            if any(m["role"] == "tool" for m in messages):
                raise ValueError("Conversation roles must alternate user/assistant")
            return "".join(f"<{m['role']}>{m['content']}</s>" for m in messages)

        def decode(self, ids):
            return ""

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    check_observation_format(load_config(None, ["environment.name=retry"]), Tok())  # user role: fine
    with pytest.raises(ConfigError, match="observation_role='tool'.*must alternate"):
        check_observation_format(load_config(None, ["environment.name=retry", "environment.observation_role=tool"]),
                                 Tok())
