"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740;
the estimator is Kool et al. 2019).

Each sample's baseline is the mean reward of the other G - 1 samples of its prompt:

  A_i   = r_i - 1/(G-1) sum_{j != i} r_j  =  G/(G-1) (r_i - mean_j r_j)
  grad  = 1/G sum_i A_i grad log pi(o_i | q),   log pi(o_i | q) = sum_t log pi(o_{i,t})

Our choices: the gradient is taken through the token ratio rho = exp(logp - logp_old) (equal to REINFORCE's at
rho = 1, i.e. one optimizer step per batch), with the PPO clip of GRPO on top (`eps_low` / `eps_high`; TRL's
RLOO does the same), which only acts when several optimizer steps reuse a batch. The default aggregation sums over
a sequence's tokens and averages over sequences, with the constant normaliser of Dr. GRPO (`seq-mean-token-sum-norm`:
1/(G L) sum_{i,t}, L = max_new_tokens), i.e. the paper's sequence-level estimator scaled by 1/L. No KL, no
reference. A group of one has no baseline and gets A = 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlpt.algorithms.base import Algorithm, LoopKind, OnlineHooks, ReferenceUse, Share, StepPlan
from rlpt.algorithms.common import (TokenLoss, TokenStats, advantage_hooks, no_metrics, once, online_layout,
                                    ppo_epochs, step_seed, token_step_plan, weighted_token_loss)
from rlpt.algorithms.grpo import clipped_surrogate
from rlpt.batching import LearnerLayout
from rlpt.config import RlptConfig
from rlpt.types import TrainBatch


def leave_one_out_advantages(rewards_P_G: Tensor) -> Tensor:
    """A_i = r_i - mean of the other samples of the group.

    >>> [round(a, 4) for a in leave_one_out_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))[0].tolist()]
    [0.6667, -0.6667, -0.6667, 0.6667]
    """
    G = rewards_P_G.shape[1]
    r = rewards_P_G.float()
    if G < 2:
        return torch.zeros_like(r)
    others_mean = (r.sum(dim=1, keepdim=True) - r) / (G - 1)
    return r - others_mean


def rloo_token_loss(logp_B_T: Tensor, old_logp_B_T: Tensor, adv_B_T: Tensor, mask_B_T: Tensor, eps_low: float,
                    eps_high: float) -> TokenLoss:
    """-min(rho A, clip(rho) A) on the masked tokens (0 elsewhere), before aggregation."""
    mask = mask_B_T.bool()
    zero = torch.zeros((), dtype=logp_B_T.dtype)
    logp, old, adv = (torch.where(mask, x, zero) for x in (logp_B_T, old_logp_B_T, adv_B_T))
    pg_B_T, clipped_B_T = clipped_surrogate(logp, old, adv, eps_low, eps_high)
    pg_B_T = torch.where(mask, pg_B_T, zero)
    return TokenLoss(loss_B_T=pg_B_T, pg_B_T=pg_B_T, kl_B_T=None, clipped_B_T=clipped_B_T & mask,
                     log_ratio_B_T=(logp - old).detach(), adv_B_T=adv)


# ------------------------------------------------------------------------------ the record (rlpt.algorithms.base)
def online_hooks(cfg: RlptConfig) -> OnlineHooks:
    return advantage_hooks(cfg, leave_one_out_advantages)


def plan(batch: TrainBatch, layout: LearnerLayout, cfg: RlptConfig, pad_id: int, step: int) -> StepPlan:
    return token_step_plan(batch, layout, cfg.algorithm.rloo.loss_agg, cfg.rollout.max_new_tokens, pad_id,
                           step_seed(cfg.run.seed, step), cfg.learner.ppo_epochs)


def loss(logp_B_T: Tensor, old_logp_B_T: Tensor, share: Share, cfg: RlptConfig) -> tuple[Tensor, TokenStats]:
    c, rows = cfg.algorithm.rloo, share.rows
    t = rloo_token_loss(logp_B_T, old_logp_B_T, rows.advantages_B_T, rows.loss_mask_B_T, c.eps_low, c.eps_high)
    return weighted_token_loss(t, rows)


ALGORITHM = Algorithm(
    name="rloo", loop=lambda cfg: LoopKind.ONLINE, steps=lambda cfg: cfg.run.steps,
    reference=lambda cfg: ReferenceUse.NONE, layout=online_layout, plan=plan, passes=ppo_epochs,
    updates_per_step=once, loss=loss, uses_old_logprobs=True, batch_metrics=no_metrics, online=online_hooks,
)
