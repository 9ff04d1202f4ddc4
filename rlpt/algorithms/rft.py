"""RFT: rejection-sampling fine-tuning (Yuan et al. 2023, arXiv 2308.01825) and DART's difficulty-aware rejection
tuning (Tong et al. 2024, arXiv 2407.13690).

- Online: each step, keep the verified-correct samples (deduplicated by prompt and response tokens) and take an
  SFT step on them: token-mean NLL, loss = -sum(logp * m) / sum(m). This is NFT with neg_weight = 0 up to the
  prompt weight and normaliser.
- Rounds (DART): per round, sample each prompt until it has its quota of correct answers or runs out of trials;
  quotas are `uniform` (k per prompt) or `prop2diff` (proportional to difficulty = measured fail rate, mean k,
  at least 1); then fine-tune E epochs on that dataset.

Deviation: prop2diff's difficulty is the fail rate of the round's first sampling pass (DART measures it the same
way, on a fixed number of trials); quotas are rounded up, so the mean is at least k.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from rlpt.algorithms.common import TokenLoss
from rlpt.batching import token_rows
from rlpt.config import RlptConfig
from rlpt.types import ScoredRollout, TrainBatch


def sft_token_loss(logp_B_T: Tensor, mask_B_T: Tensor) -> TokenLoss:
    """Per-token NLL on the masked (response) tokens."""
    mask = mask_B_T.bool()
    loss = torch.where(mask, -logp_B_T, torch.zeros((), dtype=logp_B_T.dtype))
    return TokenLoss(loss_B_T=loss, pg_B_T=loss, kl_B_T=None, clipped_B_T=torch.zeros_like(mask),
                     log_ratio_B_T=torch.zeros_like(loss), adv_B_T=torch.zeros_like(loss))


def dedup_correct(scored: Sequence[ScoredRollout]) -> list[ScoredRollout]:
    """Correct samples, first occurrence of each (prompt uid, response tokens)."""
    seen: set[tuple[str, tuple[int, ...]]] = set()
    out = []
    for s in scored:
        key = (s.rollout.prompt.uid, s.rollout.response_ids_T)
        if s.correct and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def quotas(fail_rate_P: Sequence[float], k: int, mode: str) -> list[int]:
    """Correct answers wanted per prompt.

    >>> quotas([0.0, 0.5, 1.0], k=2, mode="uniform")
    [2, 2, 2]
    >>> quotas([0.0, 0.5, 1.0], k=2, mode="prop2diff")  # mean fail rate 0.5: 2 * d / 0.5, at least 1
    [1, 2, 4]
    """
    if mode == "uniform":
        return [k] * len(fail_rate_P)
    if mode == "prop2diff":
        mean = sum(fail_rate_P) / max(len(fail_rate_P), 1)
        if mean == 0:
            return [1] * len(fail_rate_P)
        return [max(1, math.ceil(k * d / mean)) for d in fail_rate_P]
    raise ValueError(f"unknown quota mode {mode!r} (uniform | prop2diff)")


# ------------------------------------------------------------------------------ adapters used by loop and learner
def keep_groups(scored: Sequence[ScoredRollout], cfg: RlptConfig) -> Tensor:
    G = cfg.rollout.samples_per_prompt
    return torch.tensor([any(s.correct for s in scored[p:p + G]) for p in range(0, len(scored), G)])


def build_batch(scored: Sequence[ScoredRollout], cfg: RlptConfig, pad_id: int) -> TrainBatch | None:
    kept = dedup_correct(scored)
    return token_rows(kept, torch.zeros(len(kept)), pad_id) if kept else None


def batch_token_loss(logp_B_T: Tensor, old_logp_B_T: Tensor, rows: TrainBatch, cfg: RlptConfig) -> TokenLoss:
    return sft_token_loss(logp_B_T, rows.loss_mask_B_T)
