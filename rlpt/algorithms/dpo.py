"""Iterative DPO on verifier-labelled pairs: DPO (Rafailov et al. 2023, arXiv 2305.18290), iterated with
on-policy samples each round (Xiong et al. 2023, arXiv 2312.11456), optional NLL of the winner (IRPO, Pang et al.
2024, arXiv 2404.19733), optional label smoothing (conservative DPO, Mitchell 2023).

  m      = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))      (sequence logprob sums)
  L_DPO  = -(1 - ls) log sigmoid(beta m) - ls log sigmoid(-beta m)
  L      = L_DPO + alpha * (-log pi(y_w) / |y_w|)                          (IRPO when alpha > 0)

When policy == reference, m = 0 and L_DPO = log 2 (tested). Pairs: per prompt, one (correct, incorrect) pair,
`best_worst` (highest-reward correct vs lowest-reward incorrect; ties: shorter winner, longer loser) or `random`;
prompts with no contrast are skipped and counted.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch  # noqa: F401 - used by the doctests
import torch.nn.functional as F
from torch import Tensor

from rlpt.types import PreferencePair, ScoredRollout


def pair_up(scored: Sequence[ScoredRollout], group_size: int, mode: str, rng: random.Random
            ) -> tuple[list[PreferencePair], int]:
    """One pair per prompt group with both a correct and an incorrect sample; returns (pairs, skipped groups)."""
    pairs, skipped = [], 0
    for p in range(0, len(scored), group_size):
        group = scored[p:p + group_size]
        good = [s for s in group if s.correct]
        bad = [s for s in group if not s.correct]
        if not good or not bad:
            skipped += 1
            continue
        if mode == "best_worst":
            win = max(good, key=lambda s: (s.reward, -len(s.rollout.response_ids_T)))
            lose = min(bad, key=lambda s: (s.reward, -len(s.rollout.response_ids_T)))
        elif mode == "random":
            win, lose = rng.choice(good), rng.choice(bad)
        else:
            raise ValueError(f"unknown pairing {mode!r} (best_worst | random)")
        pairs.append(PreferencePair(prompt=win.rollout.prompt, chosen=win.rollout, rejected=lose.rollout))
    return pairs, skipped


def dpo_loss(chosen_B: Tensor, rejected_B: Tensor, ref_chosen_B: Tensor, ref_rejected_B: Tensor, beta: float,
             label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Per-pair DPO loss and margin m (before beta), from sequence logprob sums.

    >>> loss, m = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-2.0]), 0.1)
    >>> round(loss.item(), 6), m.item()   # policy == reference: log 2, zero margin
    (0.693147, 0.0)
    """
    margin = (chosen_B - ref_chosen_B) - (rejected_B - ref_rejected_B)
    logits = beta * margin
    loss = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return loss, margin


def winner_nll(chosen_B: Tensor, chosen_len_B: Tensor) -> Tensor:
    """IRPO's length-normalised NLL of the winner, per pair."""
    return -chosen_B / chosen_len_B.clamp(min=1)
