"""GSPO: group sequence policy optimisation (Zheng et al. 2025, arXiv 2507.18071).

GRPO's importance ratio is per token; GSPO's is per sequence, the length-normalised likelihood ratio, and it is
clipped (and the loss aggregated) per sequence:

  s_i      = (pi_theta(o_i | q) / pi_old(o_i | q)) ^ (1 / |o_i|) = exp( 1/|o_i| sum_t (logp_theta - logp_old) )
  A_i      = (r_i - mean_j r_j) / (std_j r_j + eps)                          (group-normalised, as GRPO)
  l_i      = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)
  loss     = 1/G sum_i l_i                                                   (a mean over sequences)

Clip ranges are tiny (paper: 3e-4 / 4e-4) because s_i averages the per-token log ratios.

Our choices: the sequence loss l_i is placed on each of the sequence's tokens and aggregated with the
`seq-mean-token-mean` loss weights, which gives exactly 1/G sum_i l_i over a mini-batch however its rows are split
over ranks and micro-batches (a row never spans two micro-batches). No KL term and no reference (as the paper).
The log ratio is clamped to +-20 before exp, like GRPO's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlpt.algorithms.base import Algorithm, LoopKind, OnlineHooks, ReferenceUse, Share, StepPlan
from rlpt.algorithms.common import (TokenLoss, TokenStats, advantage_hooks, masked_mean, no_metrics, once,
                                    online_layout, ppo_epochs, step_seed, token_step_plan, weighted_token_loss)
from rlpt.algorithms.grpo import LOG_RATIO_CLAMP, group_advantages
from rlpt.batching import LearnerLayout
from rlpt.config import RlptConfig
from rlpt.types import TrainBatch


def sequence_log_ratio(logp_B_T: Tensor, old_logp_B_T: Tensor, mask_B_T: Tensor) -> Tensor:
    """log s_i = mean over the row's masked tokens of (logp - old), clamped; 0 for a row without tokens.

    >>> sequence_log_ratio(torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[0.0, -1.5, -1.5]]),
    ...                    torch.tensor([[0, 1, 1]])).tolist()
    [0.0]
    """
    mask = mask_B_T.bool()
    d = torch.where(mask, logp_B_T - old_logp_B_T, torch.zeros((), dtype=logp_B_T.dtype))
    return masked_mean(d, mask, dim=1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def gspo_token_loss(logp_B_T: Tensor, old_logp_B_T: Tensor, adv_B: Tensor, mask_B_T: Tensor, eps_low: float,
                    eps_high: float) -> TokenLoss:
    """Each row's sequence loss l_i on its masked tokens (0 elsewhere), before aggregation."""
    mask = mask_B_T.bool()
    log_s_B = sequence_log_ratio(logp_B_T, old_logp_B_T, mask)
    s_B = torch.exp(log_s_B)
    adv = adv_B.to(logp_B_T.dtype)
    seq_loss_B = -torch.minimum(s_B * adv, s_B.clamp(1.0 - eps_low, 1.0 + eps_high) * adv)
    with torch.no_grad():
        clipped_B = ((adv > 0) & (s_B > 1.0 + eps_high)) | ((adv < 0) & (s_B < 1.0 - eps_low))
    zero = torch.zeros((), dtype=logp_B_T.dtype)
    loss_B_T = torch.where(mask, seq_loss_B.unsqueeze(1).expand_as(logp_B_T), zero)
    return TokenLoss(loss_B_T=loss_B_T, pg_B_T=loss_B_T, kl_B_T=None, clipped_B_T=clipped_B.unsqueeze(1) & mask,
                     log_ratio_B_T=torch.where(mask, log_s_B.detach().unsqueeze(1).expand_as(logp_B_T), zero),
                     adv_B_T=torch.where(mask, adv.unsqueeze(1).expand_as(logp_B_T), zero))


def row_advantages(rows: TrainBatch) -> Tensor:
    """The sequence advantage of each row (token_rows puts A_i on each response token)."""
    return masked_mean(rows.advantages_B_T, rows.loss_mask_B_T.bool(), dim=1)


# ------------------------------------------------------------------------------ the record (rlpt.algorithms.base)
def online_hooks(cfg: RlptConfig) -> OnlineHooks:
    return advantage_hooks(cfg, lambda rewards_P_G: group_advantages(rewards_P_G, "group"))


def plan(batch: TrainBatch, layout: LearnerLayout, cfg: RlptConfig, pad_id: int, step: int) -> StepPlan:
    return token_step_plan(batch, layout, "seq-mean-token-mean", None, pad_id, step_seed(cfg.run.seed, step),
                           cfg.learner.ppo_epochs)


def loss(logp_B_T: Tensor, old_logp_B_T: Tensor, share: Share, cfg: RlptConfig) -> tuple[Tensor, TokenStats]:
    c, rows = cfg.algorithm.gspo, share.rows
    t = gspo_token_loss(logp_B_T, old_logp_B_T, row_advantages(rows), rows.loss_mask_B_T, c.eps_low, c.eps_high)
    return weighted_token_loss(t, rows)


ALGORITHM = Algorithm(
    name="gspo", loop=lambda cfg: LoopKind.ONLINE, steps=lambda cfg: cfg.run.steps,
    reference=lambda cfg: ReferenceUse.NONE, layout=online_layout, plan=plan, passes=ppo_epochs,
    updates_per_step=once, loss=loss, uses_old_logprobs=True, batch_metrics=no_metrics, online=online_hooks,
)
