"""Composed rewards (rlpt.rewards) against hand-computed values; reward.terms config validation."""

import pytest

from rlpt.config import ConfigError, JudgeTerm, ModelTerm, RuleTerm, load_config
from rlpt.loops.common import Workers, rollout_metrics
from rlpt.rewards import ComposedReward, compose, compose_one
from rlpt.rollout_log import rollout_table
from rlpt.types import Prompt, Rollout, ScoredRollout

pytestmark = pytest.mark.unit

ACC = RuleTerm(name="acc", weight=1.0)
FMT = RuleTerm(name="fmt", weight=0.2, verifier="exact")
RM = ModelTerm(name="rm", path="/m", weight=0.5, gate="acc")
JUDGE = JudgeTerm(name="judge", path="/j", weight=-2.0, template="{completion}?")


def rollout(i: int) -> Rollout:
    return Rollout(Prompt(f"p{i}", "2+2="), i, (1, 2), (-0.1, -0.2), f"text{i}", "stop", 0)


def test_weighted_sum_and_gating_by_hand():
    terms = [ACC, FMT, RM, JUDGE]
    correct = {"acc": (1.0, True, {"pred": 4.0}, None), "fmt": (0.0, False, {}, None),
               "rm": (3.0, None, {}, None), "judge": (0.25, None, {"judge": "y"}, None)}
    (reward, ok, info, error), values = compose_one(terms, correct)
    assert reward == pytest.approx(1.0 * 1.0 + 0.2 * 0.0 + 0.5 * 3.0 - 2.0 * 0.25)  # 2.0
    assert (ok, error) == (True, None)
    assert values == {"acc": 1.0, "fmt": 0.0, "rm": 3.0, "judge": 0.25}
    assert info == {"acc": {"pred": 4.0}, "judge": {"judge": "y"}}

    wrong = {**correct, "acc": (0.0, False, {}, None)}  # the gate closes: rm adds nothing, its value is still kept
    (reward, ok, _, _), values = compose_one(terms, wrong)
    assert reward == pytest.approx(0.0 + 0.0 - 0.5)
    assert ok is False and values["rm"] == 3.0

    unknown = {**correct, "acc": (0.0, None, {}, "timeout: verifier numeric took longer than 10s")}
    (reward, ok, info, error), _ = compose_one(terms, unknown)  # an errored gate is not "correct"
    assert reward == pytest.approx(-0.5) and ok is None
    assert error == "timeout: verifier numeric took longer than 10s"
    assert info["errors"] == {"acc": "timeout: verifier numeric took longer than 10s"} and info["verdict_error"]


def test_correct_frac_of_composed_rows():
    """A failed verdict counts as not correct; a failed model score on a reward without a rule term is no verdict."""
    from rlpt.loops.common import correct_frac

    ros = [rollout(i) for i in range(3)]
    ok, bad = (1.0, True, {}, None), (0.0, None, {}, "timeout: x")
    rm_ok, rm_bad = (2.0, None, {}, None), (0.0, None, {}, "too_long: 9 tokens > max_len 8")
    with_rule = compose([ACC, RM], ros, {"acc": [ok, bad, ok], "rm": [rm_ok, rm_ok, rm_bad]})
    assert correct_frac(with_rule) == pytest.approx(2 / 3)  # the timed-out verdict counts as not correct
    model_only = compose([RM.model_copy(update={"gate": None})], ros, {"rm": [rm_ok, rm_bad, rm_ok]})
    assert model_only[1].error is not None and correct_frac(model_only) is None


def test_first_failing_term_is_the_rows_error_and_every_failure_is_named():
    verdicts = {"acc": (1.0, True, {}, None), "rm": (-1.0, None, {}, "too_long: 9000 tokens > max_len 2048"),
                "judge": (0.0, None, {}, "unparsable: judge output did not match")}
    (reward, ok, info, error), values = compose_one([ACC, RM, JUDGE], verdicts)
    assert error == "too_long: 9000 tokens > max_len 2048"
    assert info["errors"] == {"rm": "too_long: 9000 tokens > max_len 2048",
                              "judge": "unparsable: judge output did not match"}
    assert values == {"acc": 1.0, "rm": -1.0, "judge": 0.0}  # the terms' error_reward values, as sent
    assert reward == pytest.approx(1.0 + 0.5 * -1.0)


def test_compose_keeps_rollout_order_and_refuses_a_missing_verdict():
    ros = [rollout(i) for i in range(3)]
    verdicts = {"acc": [(float(i), i == 2, {}, None) for i in range(3)], "rm": [(10.0, None, {}, None)] * 3}
    out = compose([ACC, RM], ros, verdicts)
    assert [s.rollout for s in out] == ros
    assert [s.reward for s in out] == [0.0, 1.0, 2.0 + 5.0]
    assert [s.terms for s in out] == [{"acc": float(i), "rm": 10.0} for i in range(3)]
    with pytest.raises(RuntimeError, match="reward term 'rm': 2 verdicts for 3 rollouts"):
        compose([ACC, RM], ros, {**verdicts, "rm": verdicts["rm"][:2]})


class FakePool:
    def __init__(self, verdicts):
        self.verdicts, self.calls = verdicts, []

    def score_items(self, items):
        self.calls.append(list(items))
        return [self.verdicts[p.uid] for p, _ in items]


def test_composed_reward_sends_each_pool_the_same_items_once():
    ros = [rollout(i) for i in range(4)]
    acc = FakePool({f"p{i}": (float(i % 2), i % 2 == 1, {}, None) for i in range(4)})
    rm = FakePool({f"p{i}": (0.1 * i, None, {}, None) for i in range(4)})
    reward = ComposedReward([ACC, RM], {"acc": acc, "rm": rm})
    try:
        out = reward.score(ros)
    finally:
        reward.close()
    assert acc.calls == rm.calls == [[(r.prompt, r.text) for r in ros]]
    assert [round(s.reward, 6) for s in out] == [0.0, 1.05, 0.0, 1.15]
    assert [s.correct for s in out] == [False, True, False, True]


def test_a_single_rule_term_gives_the_verifiers_own_rewards():
    """reward.terms with one rule term of weight 1 scores exactly like the plain verifier (reward and verdict)."""
    ros = [rollout(i) for i in range(4)]
    verdicts = [(0.5 * i, i > 1, {"pred": i}, None if i != 3 else "ValueError: x") for i in range(4)]
    plain = [ScoredRollout(r, v[0], v[1], v[2], v[3]) for r, v in zip(ros, verdicts)]
    composed = compose([ACC], ros, {"acc": verdicts})
    assert [(s.reward, s.correct, s.error) for s in composed] == [(s.reward, s.correct, s.error) for s in plain]


def test_without_terms_the_training_reward_is_the_verifier_itself():
    verifier, reward = object(), object()
    w = Workers(rollout=None, verifier=verifier, learner=None, sync=None, health=None)
    assert w.rewarder is verifier
    assert Workers(rollout=None, verifier=verifier, learner=None, sync=None, health=None, reward=reward).rewarder is reward


def test_each_terms_value_is_a_metric_and_a_rollouts_column():
    ros = [rollout(i) for i in range(2)]
    out = compose([ACC, RM], ros, {"acc": [(1.0, True, {}, None), (0.0, False, {}, None)],
                                   "rm": [(2.0, None, {}, None), (4.0, None, {}, None)]})
    m = rollout_metrics(out, 0)
    assert (m["reward/acc"], m["reward/rm"], m["reward/mean"]) == (0.5, 3.0, (2.0 + 0.0) / 2)
    table = rollout_table(0, out)
    assert table.column("reward_terms").to_pylist() == [[("acc", 1.0), ("rm", 2.0)], [("acc", 0.0), ("rm", 4.0)]]
    assert rollout_table(0, [ScoredRollout(ros[0], 1.0, True)]).column("reward_terms").to_pylist() == [None]


def test_reward_terms_from_yaml_and_their_errors(tmp_path):
    cfg = load_config(None, ["reward.terms=[{name: acc, kind: rule, verifier: numeric}, "
                             "{name: rm, kind: model, path: /m, weight: 0.5, gate: acc}]"])
    assert [type(t) for t in cfg.reward.terms] == [RuleTerm, ModelTerm]
    assert cfg.reward.terms[1].gate == "acc" and cfg.reward.rules == (cfg.reward.terms[0],)
    bad = {
        "[{name: rm, kind: model, path: /m, gate: rm2}]": "is not a rule term",
        "[{name: a, kind: rule}, {name: a, kind: rule}]": "names must be unique",
        "[{name: mean, kind: rule}]": "taken by rlpt's own reward/ metrics",
        "[{name: errors, kind: rule}]": "taken by rlpt's own reward/ metrics or info keys",
        "[{name: j, kind: judge, path: /j, template: 'no completion {prompt}'}]": "must contain {completion}",
        "[{name: j, kind: judge, path: /j, template: '{completion}', parser: regex, pattern: 'x'}]": "needs a group",
        "[{name: x, kind: llm}]": "does not match any of the expected tags",
        "[{name: Bad-Name, kind: rule}]": "should match pattern",
    }
    for value, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, [f"reward.terms={value}"])


def test_prepare_refuses_a_missing_model_dir_and_model_terms_for_verdict_algorithms(tmp_path):
    from rlpt.prepare import check_reward

    with pytest.raises(ConfigError, match=r"reward.terms\[0\] \(rm\).path: .* is not an HF model directory"):
        check_reward(load_config(None, [f"reward.terms=[{{name: rm, kind: model, path: {tmp_path}}}]"]))
    (tmp_path / "config.json").write_text("{}")
    check_reward(load_config(None, [f"reward.terms=[{{name: rm, kind: model, path: {tmp_path}}}]"]))
    for algo in ("nft", "rft", "dpo"):
        with pytest.raises(ConfigError, match=r"the model/judge terms \['rm'\] would not change what it trains on"):
            check_reward(load_config(None, [f"algorithm.name={algo}",
                                            f"reward.terms=[{{name: rm, kind: model, path: {tmp_path}}}]"]))
        with pytest.raises(ConfigError, match=r"the model/judge terms \['rm'\] would not change what it trains on"):
            check_reward(load_config(None, [f"algorithm.name={algo}", f"reward.terms=[{{name: acc, kind: rule}}, "
                                                                      f"{{name: rm, kind: model, path: {tmp_path}}}]"]))
        check_reward(load_config(None, [f"algorithm.name={algo}", "reward.terms=[{name: acc, kind: rule}]"]))
