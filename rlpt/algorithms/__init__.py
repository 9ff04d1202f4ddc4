"""Algorithms, one file each: pure tensor functions, then one `Algorithm` record (rlpt.algorithms.base) that tells
the loops, the actor graph and the learner everything they need. Selection is this explicit dict keyed by
`algorithm.name`; a new algorithm is one file, one entry here, one hand-computed test and one config
(DESIGN.md §2), whichever loop drives it."""

from __future__ import annotations

from rlpt.algorithms import dpo, grpo, gspo, nft, rft, rloo
from rlpt.algorithms.base import Algorithm, LoopKind, ReferenceUse
from rlpt.config import RlptConfig

ALGORITHMS: dict[str, Algorithm] = {
    "grpo": grpo.ALGORITHM,
    "nft": nft.ALGORITHM,
    "rft": rft.ALGORITHM,
    "dpo": dpo.ALGORITHM,
    "gspo": gspo.ALGORITHM,
    "rloo": rloo.ALGORITHM,
}


def algorithm_of(cfg: RlptConfig) -> Algorithm:
    return ALGORITHMS[cfg.algorithm.name]


__all__ = ["ALGORITHMS", "Algorithm", "LoopKind", "ReferenceUse", "algorithm_of"]
