"""Evaluation figures (rlpt/eval_stats.py) against values computed by hand."""

from math import comb

import pytest

from rlpt.eval_stats import eval_metrics, pass_at_k
from rlpt.types import Prompt, Rollout, ScoredRollout

pytestmark = pytest.mark.unit


def s(reward: float, correct: bool | None, error: str | None = None) -> ScoredRollout:
    ro = Rollout(prompt=Prompt(uid="p", text="1+1="), sample_index=0, response_ids_T=(1,), logprobs_T=(0.0,),
                 text="2", finish_reason="stop", policy_version=0)
    return ScoredRollout(rollout=ro, reward=reward, correct=correct, error=error)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 2, 1), (5, 2, 3), (8, 3, 4), (10, 0, 5), (10, 10, 1), (16, 5, 8)])
def test_pass_at_k_equals_the_binomial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_refuses_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_eval_metrics_by_hand():
    # 2 prompts. greedy: right, wrong. sampled (n = 4): prompt 0 has 1 correct, prompt 1 has 3 correct.
    greedy = [s(1.0, True), s(0.0, False)]
    sampled = [s(1.0, True), s(0.0, False), s(0.0, False), s(0.0, False, "timeout: 10s"),
               s(1.0, True), s(1.0, True), s(0.5, True), s(0.0, False)]
    m = eval_metrics(greedy, sampled, 4, (1, 2))
    assert m["eval/prompts"] == 2 and m["eval/errors"] == 1
    assert m["eval/greedy_pass@1"] == 0.5 and m["eval/greedy_reward_mean"] == 0.5
    assert m["eval/mean@4"] == 4 / 8 and m["eval/reward_mean@4"] == 3.5 / 8
    assert m["eval/pass@1"] == pytest.approx((1 / 4 + 3 / 4) / 2)
    # pass@2: prompt 0: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; prompt 1: 1 - C(1,2)/C(4,2) = 1
    assert m["eval/pass@2"] == pytest.approx(0.75)


def test_a_verifier_without_correctness_gets_reward_figures_only():
    m = eval_metrics([s(0.3, None)], [s(0.2, None), s(0.4, None)], 2, (1,))
    assert m == pytest.approx({"eval/prompts": 1.0, "eval/errors": 0.0, "eval/greedy_reward_mean": 0.3,
                               "eval/reward_mean@2": 0.3})


def test_greedy_only():
    assert eval_metrics([s(1.0, True)], [], 0, ()) == {"eval/prompts": 1.0, "eval/errors": 0.0,
                                                       "eval/greedy_reward_mean": 1.0, "eval/greedy_pass@1": 1.0}
    with pytest.raises(ValueError, match="whole groups"):
        eval_metrics([s(1.0, True)], [s(1.0, True)] * 3, 2, (1,))
