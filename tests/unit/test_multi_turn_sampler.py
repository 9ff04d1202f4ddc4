"""The multi-turn sampler (rlpt.loops.multi_turn) on hand-built pieces: a scripted engine, a character tokenizer,
environments stepped in-process or in the isolated environment process (rlpt.isolation with the replay loader).
Every trajectory's ids, masks, logprobs, versions, reward and ending are checked against what was scripted."""

from __future__ import annotations

from functools import partial

import pytest

from rlpt.config import load_config
from rlpt.environments.replay import EnvStepper, item_cost, load_env_stepper
from rlpt.isolation import IsolatedScorer
from rlpt.loops.common import rollout_metrics
from rlpt.loops.multi_turn import MultiTurn, multi_turn_sampler, turn_seed
from rlpt.metrics import PhaseTimer
from rlpt.trajectory import Observations
from rlpt.types import Prompt, Rollout, Score, ScoredRollout

pytestmark = pytest.mark.unit


class CharTok:
    """One id per character; no chat template (observations go in as "\\n" + text + "\\n")."""

    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class ScriptedEngine:
    """Answers each request with script(prompt uid, context text, turn) as characters; logprob -0.1 per token;
    the policy version it serves can change between calls (as a sync between two turns would)."""

    def __init__(self, script, version=0):
        self.script, self.version, self.calls, self.seeds = script, version, [], []

    def __call__(self, prompts, seeds, spec):
        self.calls.append(len(prompts))
        self.seeds.append(list(seeds))
        out = []
        for p in prompts:
            context = "".join(chr(i) for i in p.prompt_ids)
            full = self.script(p, context)
            text = full[:spec.max_tokens]
            ids = tuple(ord(c) for c in text)
            finish = "length" if len(full) > spec.max_tokens else "stop"
            out.append(Rollout(p, 0, ids, (-0.1,) * len(ids), text, finish, self.version, "fake-engine"))
        return out


class InProcessEnvs:
    def __init__(self, spec, **args):
        self.stepper = EnvStepper(spec, args)

    def score_items(self, items):
        out = []
        for prompt, turns in items:
            try:
                s = self.stepper(prompt, turns)
                out.append((s.reward, s.correct, dict(s.info), None))
            except Exception as e:  # the isolated process turns a raise into this row
                out.append((0.0, None, {}, f"{type(e).__name__}: {e}"))
        return out


def cfg_with(**env):
    overrides = ["rollout.samples_per_prompt=2", "rollout.max_new_tokens=40", "environment.name=retry"]
    overrides += [f"environment.{k}={v}" for k, v in env.items()]
    return load_config(None, overrides)


def prompt(uid, q, answer):
    return Prompt(uid=uid, text=q, answer=answer, prompt_ids=tuple(ord(c) for c in q), meta={"question": answer})


def sample(cfg, engine, envs, prompts, final=None):
    tok = CharTok()
    mt = MultiTurn(envs, Observations(tok, "user"), lambda ids: tok.decode(ids))
    timer = PhaseTimer()
    out = multi_turn_sampler(cfg, engine, mt, final, timer)(prompts, [100, 200][:len(prompts)])
    return out, timer


def test_retry_wrong_then_right_builds_the_exact_trajectory():
    # first answer wrong ("8"), second right ("7"): two model turns with the hint observation between them
    engine = ScriptedEngine(lambda p, ctx: "7" if "Try again" in ctx else "8")
    out, timer = sample(cfg_with(waves=1), engine, InProcessEnvs("retry"), [prompt("a0", "3+4=", "7")])
    assert len(out) == 2 and engine.calls == [2, 2]
    s = out[0]
    obs = "\nWrong. Try again: 3+4=\n"
    assert s.rollout.response_ids_T == (ord("8"),) + tuple(ord(c) for c in obs) + (ord("7"),)
    assert s.rollout.loss_mask_T == (1,) + (0,) * len(obs) + (1,)
    assert s.rollout.logprobs_T == (-0.1,) + (0.0,) * len(obs) + (-0.1,)
    assert (s.reward, s.correct, s.error, s.rollout.text) == (1.0, True, None, "7")
    t = s.info["trajectory"]
    assert t["turns"] == [["assistant", "8"], ["observation", "Wrong. Try again: 3+4="], ["assistant", "7"]]
    assert (t["end"], t["model_turns"]) == ("done", 2)
    assert set(timer.as_metrics()) == {"timing/rollout", "timing/verify"}
    # seeds: turn 0 keeps the single-turn request seeds (seed + sample index), later turns get new ones
    assert engine.seeds == [[100, 101], [turn_seed(100, 1), turn_seed(101, 1)]]
    m = rollout_metrics(out, 0)
    assert m["tokens/generated"] == 4.0  # the model's tokens only: 2 per trajectory, observations excluded
    assert m["env/model_turns"] == 2.0 and m["env/end/done"] == 1.0
    assert m["env/observation_tokens"] == len(obs)


def test_turn_limit_and_versions_per_turn():
    class Engine(ScriptedEngine):
        def __call__(self, prompts, seeds, spec):
            out = super().__call__(prompts, seeds, spec)
            self.version += 1  # a sync between two turns (the asynchronous loop)
            return out

    engine = Engine(lambda p, ctx: "1")  # always wrong
    out, _ = sample(cfg_with(max_turns=3, waves=1), engine, InProcessEnvs("retry", max_attempts=5, hint="No:"),
                    [prompt("a0", "3+4=", "7")])
    s = out[0]
    assert s.info["trajectory"]["end"] == "max_turns" and s.info["trajectory"]["model_turns"] == 3
    assert s.reward == 0.0 and s.correct is False and s.error is None
    sampled_versions = [v for v, m in zip(s.rollout.versions_T, s.rollout.loss_mask_T) if m]
    assert sampled_versions == [0, 1, 2] and s.rollout.policy_version == 0  # the oldest turn counts for staleness


def test_token_budget_cuts_a_turn_and_ends_the_trajectory():
    # budget 40 tokens after the prompt (rollout.max_new_tokens); hint observations are "\nNo:3+4=\n" (9 tokens).
    # Turn 1: sample 0 says 10 tokens, sample 1 says 5; turn 2 may take 21 and 26: one request asks for 26, and
    # sample 0's turn is cut to its 21 by the sampler (decoded again from the kept ids)
    class Engine(ScriptedEngine):
        def __call__(self, prompts, seeds, spec):
            self.calls.append(len(prompts))
            self.specs = getattr(self, "specs", []) + [spec.max_tokens]
            out = []
            for k, p in enumerate(prompts):
                ctx = "".join(chr(i) for i in p.prompt_ids)
                full = "8" * 60 if "No:" in ctx else "9" * (10 if k == 0 else 5)
                text = full[:spec.max_tokens]
                ids = tuple(ord(c) for c in text)
                out.append(Rollout(p, 0, ids, (-0.1,) * len(ids), text, "length", 0, "fake"))
            return out

    engine = Engine(script=None)
    out, _ = sample(cfg_with(turn_tokens=50, waves=1), engine, InProcessEnvs("retry", hint="No:"),
                    [prompt("a0", "3+4=", "7")])
    assert engine.specs == [40, 26]
    a, b = out
    assert [len(s.rollout.response_ids_T) for s in out] == [40, 40]
    assert a.rollout.text == "8" * 21 and b.rollout.text == "8" * 26 and a.rollout.finish_reason == "length"
    assert [s.info["trajectory"]["end"] for s in out] == ["done", "done"]  # retry's last attempt: done, reward 0
    # a first turn that spends the whole budget: the trajectory ends there ("budget"), reward of its step
    out, _ = sample(cfg_with(turn_tokens=50), ScriptedEngine(lambda p, ctx: "9" * 60), InProcessEnvs("retry"),
                    [prompt("a0", "3+4=", "7")])
    assert [s.info["trajectory"]["end"] for s in out] == ["budget", "budget"] and out[0].error is None
    assert len(out[0].rollout.response_ids_T) == 40 and out[0].info["trajectory"]["model_turns"] == 1
    # a 20-token turn, then the 24-token default hint: no room for another model token, so an error row
    engine = ScriptedEngine(lambda p, ctx: "9" * 20)
    out, _ = sample(cfg_with(turn_tokens=20), engine, InProcessEnvs("retry"), [prompt("a0", "3+4=", "7")])
    s = out[0]
    assert s.error.startswith("too_long: observation of 24 tokens, 20 of the trajectory's 40 tokens left")
    assert s.info["trajectory"]["end"] == "error" and s.reward == 0.0
    assert s.rollout.response_ids_T == tuple(ord("9") for _ in range(20))  # the observation was not appended


def test_waves_give_the_same_trajectories_and_overlap_environment_steps_with_generation():
    """Two waves: wave 0's environment round must run while wave 1 generates. The environment of the first round
    blocks until the engine has been called again (for the other wave); without the overlap it would wait in vain
    and the test fails on its timeout."""
    import threading

    script = lambda p, ctx: "7" if "Try again" in ctx else "8"  # noqa: E731
    prompts = [prompt("a0", "3+4=", "7"), prompt("a1", "1+1=", "2")]
    one, _ = sample(cfg_with(waves=1), ScriptedEngine(script), InProcessEnvs("retry"), prompts)

    called_again = threading.Event()

    class Engine(ScriptedEngine):
        def __call__(self, prompts, seeds, spec):
            if self.calls:
                called_again.set()
            return super().__call__(prompts, seeds, spec)

    class Envs(InProcessEnvs):
        def __init__(self):
            super().__init__("retry")
            self.rounds = 0

        def score_items(self, items):
            self.rounds += 1
            if self.rounds == 2:  # the first environment round after a model turn (1 is the resets)
                assert called_again.wait(10), "wave 1 did not generate while wave 0's environment round ran"
            return super().score_items(items)

    engine = Engine(script)
    two, timer = sample(cfg_with(waves=2), engine, Envs(), prompts)
    assert engine.calls == [2, 2, 2, 2]  # 4 trajectories, 2 per wave, 2 turns each
    key = lambda s: (s.rollout.prompt.uid, s.rollout.sample_index)  # noqa: E731
    assert sorted(two, key=key) == sorted(one, key=key) and [key(s) for s in two] == [key(s) for s in one]


def test_reward_from_the_terms_scores_the_final_turn():
    class Final:
        def __init__(self):
            self.seen = []

        def score(self, rollouts):
            self.seen += [r.text for r in rollouts]
            return [ScoredRollout(r, 0.5, None, {"judge": 1}) for r in rollouts]

    final = Final()
    engine = ScriptedEngine(lambda p, ctx: "7" if "Try again" in ctx else "8")
    out, _ = sample(cfg_with(reward="terms"), engine, InProcessEnvs("retry"), [prompt("a0", "3+4=", "7")], final)
    assert final.seen == ["7", "7"] and [s.reward for s in out] == [0.5, 0.5]
    assert out[0].info["judge"] == 1 and out[0].info["trajectory"]["model_turns"] == 2


def test_a_failing_first_step_is_an_error_row_that_keeps_the_model_turn():
    engine = ScriptedEngine(lambda p, ctx: "7")
    out, _ = sample(cfg_with(), engine, InProcessEnvs("tests.envs:RevealDigit"),
                    [Prompt(uid="b0", text="?", answer="3", prompt_ids=(63,))])  # no meta["question"]
    # RevealDigit reads meta only at its first step: the reset is fine, the step raises
    assert all(s.error.startswith("KeyError") for s in out) and all(s.info["trajectory"]["end"] == "error" for s in out)
    assert all(s.rollout.loss_mask_T == (1,) for s in out)


def test_a_failing_reset_is_an_error_row_without_tokens_stamped_like_its_round():
    engine = ScriptedEngine(lambda p, ctx: "7", version=4)
    out, _ = sample(cfg_with(), engine, InProcessEnvs("tests.envs:ResetRaises"),
                    [prompt("q0", "1+1=", "2"), prompt("q1", "1+2=", "3")])
    bad, good = out[:2], out[2:]
    assert all(s.error == "RuntimeError: reset failed" and s.rollout.response_ids_T == () for s in bad)
    assert all(s.rollout.policy_version == 4 and s.info["trajectory"]["model_turns"] == 0 for s in bad)
    assert all(s.error is None and s.reward == 1.0 for s in good) and sum(engine.calls) == 2  # only q1's


@pytest.mark.parametrize("env,expect", [("Raises", "ValueError: environment bug"),
                                        ("Hangs", "timeout: environment tests.envs:Hangs took longer than 2.0s"),
                                        ("Crashes", "crash: environment process exited with code 3"),
                                        ("HugeObservation", "too_long: observation of 100002 tokens")])
def test_environment_faults_are_error_rows_and_the_rest_goes_on(env, expect):
    engine = ScriptedEngine(lambda p, ctx: "7")
    spec = f"tests.envs:{env}"
    with IsolatedScorer(spec, 2.0, -1.0, loader=partial(load_env_stepper, args={}), kind="environment",
                        item_cost=item_cost) as envs:
        out, _ = sample(cfg_with(**{"name": spec, "error_reward": -1.0}), engine, envs,
                        [prompt("q0", "1+1=", "2"), prompt("q1", "1+2=", "3")])
    bad, good = out[:2], out[2:]
    assert all(s.error is not None and s.error.startswith(expect) for s in bad), [s.error for s in bad]
    assert all(s.reward == -1.0 and s.info["trajectory"]["end"] == "error" for s in bad)
    assert all(s.error is None and s.reward == 1.0 and s.info["trajectory"]["end"] == "done" for s in good)
    m = rollout_metrics(out, 0)
    assert m["verifier/errors"] == 2.0 and m["env/end/error"] == 0.5


def test_python_tool_sandbox_violation_is_seen_by_the_model_and_counted():
    code = "```python\nimport time\nwhile True: pass\n```"
    engine = ScriptedEngine(lambda p, ctx: "4" if "[sandbox" in ctx else code)
    out, _ = sample(load_config(None, ["rollout.samples_per_prompt=1", "rollout.max_new_tokens=400",
                                       "environment.name=python", "environment.max_turns=2"]),
                    engine, InProcessEnvs("python", verifier="numeric",
                                          limits=__import__("rlpt.sandbox", fromlist=["x"]).SandboxLimits(
                                              wall_s=1.0, cpu_s=1)),
                    [prompt("p0", "2+2=", "4")])
    s = out[0]
    assert s.info["trajectory"]["sandbox_violations"] == 1 and s.reward == 1.0 and s.correct is True
    obs = s.info["trajectory"]["turns"][1][1]
    assert "[sandbox" in obs
    assert rollout_metrics(out, 0)["env/sandbox_violations"] == 1.0


def test_rollouts_file_and_report_show_trajectories_turn_by_turn(tmp_path):
    import json

    from rlpt.report import _group
    from rlpt.rollout_log import read_rollouts, write_rollouts

    engine = ScriptedEngine(lambda p, ctx: "7" if "Try again" in ctx else "8")
    out, _ = sample(cfg_with(), engine, InProcessEnvs("retry"), [prompt("a0", "3+4=", "7")])
    single = ScoredRollout(Rollout(prompt("b0", "1+1=", "2"), 0, (50,), (-0.1,), "2", "stop", 0), 1.0, True)
    write_rollouts(tmp_path, 3, [*out, single])
    rows = read_rollouts(tmp_path).to_pylist()
    assert rows[0]["turns"] == [{"role": "assistant", "text": "8"},
                                {"role": "observation", "text": "Wrong. Try again: 3+4="},
                                {"role": "assistant", "text": "7"}]
    assert rows[0]["completion"] == "7" and rows[2]["turns"] is None
    info = json.loads(rows[0]["info"])  # how it ended stays in info; the turns live in their column only
    assert info["trajectory"]["end"] == "done" and "turns" not in info["trajectory"]
    shown = _group("best", rows[:2])["samples"][0]["completion"]
    assert shown == "[assistant] 8\n[observation] Wrong. Try again: 3+4=\n[assistant] 7"
    assert _group("best", rows[2:])["samples"][0]["completion"] == "2"
