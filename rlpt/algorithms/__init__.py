"""Algorithms, one file each (pure tensor functions plus thin adapters). Selection is the explicit `ALGORITHMS`
dict keyed by `algorithm.name`; a new token-level algorithm = one file + one entry here (DESIGN.md §2).
DPO trains on pairs, not token rows: its loop and learner method are separate (rlpt/loops/dpo.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import Tensor

from rlpt.algorithms import grpo, nft, rft
from rlpt.algorithms.common import TokenLoss
from rlpt.config import RlptConfig
from rlpt.types import ScoredRollout, TrainBatch


@dataclass(frozen=True)
class Objective:
    """What the online loop and the learner need from a token-level algorithm."""

    keep_groups: Callable[[Sequence[ScoredRollout], RlptConfig], Tensor]  # bool per group (dynamic sampling)
    resample_tries: Callable[[RlptConfig], int]  # extra sampling rounds to refill dropped groups
    build_batch: Callable[[Sequence[ScoredRollout], RlptConfig, int], TrainBatch | None]
    token_loss: Callable[[Tensor, Tensor, TrainBatch, RlptConfig], TokenLoss]
    aggregation: Callable[[RlptConfig], tuple[str, int | None]]  # (mode, norm_len) for loss weights


ALGORITHMS: dict[str, Objective] = {
    "grpo": Objective(
        keep_groups=grpo.keep_groups,
        resample_tries=lambda c: c.algorithm.grpo.max_resample_tries if c.algorithm.grpo.dynamic_sampling else 0,
        build_batch=grpo.build_batch,
        token_loss=grpo.batch_token_loss,
        aggregation=lambda c: (c.algorithm.grpo.loss_agg, c.rollout.max_new_tokens),
    ),
    "nft": Objective(
        keep_groups=nft.keep_groups,
        resample_tries=lambda c: c.algorithm.nft.max_resample_tries,
        build_batch=nft.build_batch,
        token_loss=nft.batch_token_loss,
        aggregation=lambda c: ("seq-mean-token-sum-norm", c.rollout.max_new_tokens),
    ),
    "rft": Objective(  # online mode; rounds mode has its own loop
        keep_groups=rft.keep_groups,
        resample_tries=lambda c: 0,
        build_batch=rft.build_batch,
        token_loss=rft.batch_token_loss,
        aggregation=lambda c: ("token-mean", None),
    ),
}

__all__ = ["ALGORITHMS", "Objective"]
