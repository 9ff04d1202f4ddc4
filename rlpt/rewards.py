"""Composed rewards: the reward of a rollout as a weighted sum of terms (rule verifiers, reward models, judges).

reward = sum over terms of weight * value, where a gated term counts only when its gate (a rule term) says the
rollout is correct (it adds 0 otherwise). Every term's own value is kept (`ScoredRollout.terms`, the rollouts file's
`reward_terms`, the `reward/<term>` metrics), the raw value even for a gated term, so a user sees what each scorer
said. A term that failed on a rollout takes its `error_reward` as value and the rollout is an error row: its `error`
is the first failing term's (unchanged, so `verifier/errors/<kind>` counts it) and `info["errors"]` names every
failing term. `correct` is the first rule term's verdict (None without a rule term: a model score is not a
verdict); a row whose verdict failed is marked `info["verdict_error"]`, so it counts as not correct, while a
failed model score on a row without a rule term leaves correctness unknown.

The pools that score each term are services here (anything with `score_items`); actors/launch.py builds them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Mapping, Protocol, Sequence

from rlpt.config import RewardTerm, RuleTerm
from rlpt.isolation import Verdict, VerifyItem, verify_items
from rlpt.types import Rollout, ScoredRollout


class ItemScorer(Protocol):
    def score_items(self, items: Sequence[VerifyItem]) -> list[Verdict]: ...


def compose_one(terms: Sequence[RewardTerm], verdicts: Mapping[str, Verdict]) -> tuple[Verdict, dict[str, float]]:
    """One rollout's (reward, correct, info, error) from its terms' verdicts, and each term's value.

    >>> from rlpt.config import RuleTerm, ModelTerm
    >>> acc, rm = RuleTerm(name="acc", weight=2.0), ModelTerm(name="rm", path="/m", weight=0.5, gate="acc")
    >>> compose_one([acc, rm], {"acc": (1.0, True, {}, None), "rm": (3.0, None, {}, None)})
    ((3.5, True, {}, None), {'acc': 1.0, 'rm': 3.0})
    >>> compose_one([acc, rm], {"acc": (0.0, False, {}, None), "rm": (3.0, None, {}, None)})[0]
    (0.0, False, {}, None)
    """
    values = {t.name: float(verdicts[t.name][0]) for t in terms}
    says = {t.name: verdicts[t.name][1] for t in terms}
    reward = sum(t.weight * values[t.name] for t in terms if t.gate is None or says[t.gate] is True)
    rules = [t.name for t in terms if isinstance(t, RuleTerm)]
    correct = says[rules[0]] if rules else None
    errors = {t.name: verdicts[t.name][3] for t in terms if verdicts[t.name][3] is not None}
    info: dict[str, Any] = {t.name: dict(verdicts[t.name][2]) for t in terms if verdicts[t.name][2]}
    if errors:
        info["errors"] = errors
    if rules and rules[0] in errors:  # the verdict itself failed: the row counts as not correct (correct_frac)
        info["verdict_error"] = True
    return (reward, correct, info, next(iter(errors.values()), None)), values


def compose(terms: Sequence[RewardTerm], rollouts: Sequence[Rollout],
            verdicts: Mapping[str, Sequence[Verdict]]) -> list[ScoredRollout]:
    """Every rollout scored from every term's verdicts (one verdict per rollout per term, in rollout order)."""
    for t in terms:
        if len(verdicts[t.name]) != len(rollouts):
            raise RuntimeError(f"reward term {t.name!r}: {len(verdicts[t.name])} verdicts for {len(rollouts)} rollouts")
    out = []
    for i, r in enumerate(rollouts):
        (reward, correct, info, error), values = compose_one(terms, {t.name: verdicts[t.name][i] for t in terms})
        out.append(ScoredRollout(r, reward=reward, correct=correct, info=info, error=error, terms=values))
    return out


class ComposedReward:
    """The reward service of a run with `reward.terms`: each term's pool scores the same items, all pools at
    once (one thread per term), then `compose`."""

    def __init__(self, terms: Sequence[RewardTerm], pools: Mapping[str, ItemScorer]) -> None:
        missing = [t.name for t in terms if t.name not in pools]
        if missing:
            raise ValueError(f"reward terms without a pool: {missing}")
        self.terms, self.pools = tuple(terms), dict(pools)
        self._threads = ThreadPoolExecutor(len(self.terms), thread_name_prefix="rlpt-reward")

    def score(self, rollouts: Sequence[Rollout]) -> list[ScoredRollout]:
        if not rollouts:
            return []
        items = verify_items(rollouts)
        futures = {t.name: self._threads.submit(self.pools[t.name].score_items, items) for t in self.terms}
        # Every pool's call ends before this returns or raises: a caller tearing the actors down after an error
        # must not find another pool still scoring (it would start a replacement that outlives the run).
        wait(futures.values())
        return compose(self.terms, rollouts, {name: f.result() for name, f in futures.items()})

    def close(self) -> None:
        self._threads.shutdown(wait=False)
