"""The `Algorithm` record: everything the loops, the actor graph and the learner ranks need to know about one
algorithm, so that nothing outside `rlpt/algorithms/` asks which algorithm is running (DESIGN.md §7).

An algorithm file ends with one `Algorithm(...)` value; `rlpt.algorithms.ALGORITHMS` maps `algorithm.name` to it.

- which loop drives it (`loop`), how many loop steps a run has (`steps`), the round settings of round loops
  (`rounds`), and the hooks that loop calls (`online` / `quota` / `pairs`: each is set for the loops the
  algorithm runs under, None otherwise);
- whether it needs a reference model and whether that reference follows the policy (`reference`);
- the learner row layout (`layout`), how a step's batch is planned into optimizer steps (`plan`), and from those
  the number of optimizer steps one LR schedule spans (`schedule_steps`);
- the micro-batch loss returning `(loss, stats)`, with a stats type that reduces itself across micro-batches and
  ranks (`LossStats`), and the algorithm's own batch metrics.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, TypeVar

from torch import Tensor

from rlpt.types import PreferencePair, ScoredRollout, TrainBatch

if TYPE_CHECKING:
    from rlpt.batching import LearnerLayout
    from rlpt.config import RlptConfig


class LoopKind(enum.Enum):
    ONLINE = "online"  # rlpt/loops/online.py: sample, score, train, sync every step
    QUOTA_ROUNDS = "quota_rounds"  # rlpt/loops/rft.py: sample each prompt to a quota of kept samples, fine-tune
    PAIR_ROUNDS = "pair_rounds"  # rlpt/loops/dpo.py: sample, pair up, train on pairs against a reference


class ReferenceUse(enum.Enum):
    NONE = "none"  # no reference actor
    FROZEN = "frozen"  # the initial policy, never synced
    FOLLOWS_POLICY = "follows_policy"  # a member of the weight-sync group: takes each new policy version


S = TypeVar("S", bound="LossStats")


class LossStats(Protocol):
    """Diagnostics of one micro-batch's loss. `merged` adds two (micro-batches of a rank, or ranks of a group) and
    `as_metrics` turns the total into metric values; `passes` = epochs over the batch, `optimizer_steps` = steps
    taken in this training step."""

    def merged(self: S, other: S) -> S: ...

    def as_metrics(self, passes: int, optimizer_steps: int) -> dict[str, float]: ...


@dataclass(frozen=True)
class Share:
    """One rank's rows of one mini-batch. `norm` divides the summed loss where the loss weights do not already
    normalise it (pairs: the mini-batch's number of real pairs; 1.0 for token-weighted losses)."""

    rows: TrainBatch
    norm: float = 1.0


@dataclass(frozen=True)
class StepPlan:
    """A training step as optimizer steps: `mini_batches[i][k]` is rank k's share of mini-batch i, and `order`
    lists the mini-batches in the order they are trained (one optimizer step each): PPO epochs repeat the same
    mini-batches, DPO epochs each have their own shuffle."""

    mini_batches: list[list[Share]]
    order: list[int]
    passes: int

    @property
    def optimizer_steps(self) -> int:
        return len(self.order)

    def for_rank(self, k: int) -> "StepPlan":
        return StepPlan([[mb[k]] for mb in self.mini_batches], self.order, self.passes)


@dataclass(frozen=True)
class RoundSpec:
    """The shape of a round loop: `rounds` rounds of `prompts_per_round` prompts x `samples_per_prompt` samples,
    trained `epochs` times."""

    rounds: int
    prompts_per_round: int
    samples_per_prompt: int
    epochs: int


@dataclass(frozen=True)
class OnlineHooks:
    """What the online loop asks of the algorithm, bound to one config."""

    keep_groups: Callable[[Sequence[ScoredRollout]], Tensor]  # bool per group (dynamic sampling)
    resample_tries: int  # extra sampling rounds to refill dropped groups
    build_batch: Callable[[Sequence[ScoredRollout], int], TrainBatch | None]  # (kept groups, pad id)


@dataclass(frozen=True)
class QuotaHooks:
    """What the quota-rounds loop asks of a rejection-sampling algorithm, bound to one config."""

    spec: RoundSpec
    max_trials: int  # samples per prompt before giving up on its quota
    quotas: Callable[[Sequence[float]], list[int]]  # first-pass fail rate per prompt -> kept samples wanted
    keep: Callable[[Sequence[ScoredRollout]], list[ScoredRollout]]  # the samples worth training on
    restart_from_base: bool  # each round fine-tunes the base model (else the last policy)
    rows_per_update: int  # rows per learner train_step (the layout's step size)
    updates_per_epoch: int  # learner train_steps per epoch over the round's set (fixed: the LR horizon counts them)


@dataclass(frozen=True)
class PairHooks:
    """What the pair-rounds loop asks of a preference algorithm, bound to one config."""

    spec: RoundSpec
    make_pairs: Callable[[Sequence[ScoredRollout], random.Random], tuple[list[PreferencePair], int]]
    build_batch: Callable[[Sequence[PreferencePair], int], TrainBatch]  # (pairs, pad id) -> rows 2i, 2i+1


LossFn = Callable[[Tensor, Tensor, Share, "RlptConfig"], "tuple[Tensor, LossStats]"]
PlanFn = Callable[[TrainBatch, "LearnerLayout", "RlptConfig", int, int], StepPlan]


@dataclass(frozen=True)
class Algorithm:
    name: str
    loop: Callable[["RlptConfig"], LoopKind]
    steps: Callable[["RlptConfig"], int]  # loop steps (rounds for round loops): rows of metrics.jsonl
    reference: Callable[["RlptConfig"], ReferenceUse]
    layout: Callable[["RlptConfig"], "LearnerLayout"]
    plan: PlanFn  # (batch, layout, cfg, pad id, step) -> the step's optimizer steps
    passes: Callable[["RlptConfig"], int]  # epochs one train_step makes over its batch (PPO or DPO epochs)
    updates_per_step: Callable[["RlptConfig"], int]  # learner train_step calls per loop step (round)
    loss: LossFn  # (logp_B_T with grad, old/behaviour logp_B_T, share of a micro-batch, cfg) -> (loss, stats)
    uses_old_logprobs: bool  # the loss takes a ratio against old logprobs (learner.old_logprobs applies)
    batch_metrics: Callable[[TrainBatch], dict[str, float]]
    online: Callable[["RlptConfig"], OnlineHooks] | None = None
    quota: Callable[["RlptConfig"], QuotaHooks] | None = None
    pairs: Callable[["RlptConfig"], PairHooks] | None = None
    schedule_steps: Callable[["RlptConfig"], int] | None = None  # LR horizon, when not `run_optimizer_steps`
    # Trains on verdicts (correct / incorrect samples), not on reward values: with reward.terms, rule terms only.
    needs_correct: bool = False

    def needs_reference(self, cfg: "RlptConfig") -> bool:
        return self.reference(cfg) is not ReferenceUse.NONE

    def optimizer_steps_per_update(self, cfg: "RlptConfig") -> int:
        """Optimizer steps of one learner train_step: `plan(...).optimizer_steps` for this config."""
        return cfg.learner.mini_batches * self.passes(cfg)

    def run_optimizer_steps(self, cfg: "RlptConfig") -> int:
        """Optimizer steps of a whole run where every step trains: steps x updates x steps per update."""
        return self.steps(cfg) * self.updates_per_step(cfg) * self.optimizer_steps_per_update(cfg)

    def lr_horizon(self, cfg: "RlptConfig") -> int:
        """Optimizer steps one LR schedule spans (a learner rebuilt from the base model starts a new one)."""
        return self.schedule_steps(cfg) if self.schedule_steps is not None else self.run_optimizer_steps(cfg)
