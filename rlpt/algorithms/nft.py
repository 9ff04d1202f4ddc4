"""NFT: Negative-aware Fine-Tuning (Chen et al. 2025, arXiv 2505.18116; reference code NVlabs/NFT).

NFT trains on positive AND negative answers with a supervised objective. Negative answers train an implicit
negative policy, parameterised by the current policy itself, so every token needs only the policy's own ratio.

Equations (prompt q with G samples, r_hat = fraction of correct samples, ratio per response token t)
  R_t      = exp(min(logp_theta - logp_old, 10))
  rq       = clamp(r_hat, 0.02, 0.98)
  positive (correct) token:   l = -log R_t
  negative (incorrect) token: l = -log(max_v((1 - rq R_t) / (1 - rq), eps))
           where max_v(x, m) = x + (max(x, m) - x).detach(): the VALUE is floored at eps, the gradient is x's
  weight   w(q) = 1 (normalize=0), 1 - rq (normalize=1), sqrt((1 - rq) / rq) (normalize=2)
  loss     = sum over tokens of w(q) * (l_pos or neg_weight * l_neg) / a constant
  Groups with r_hat in {0, 1} carry no signal and are filtered (dynamic sampling). No reference model, no KL.

Equivalences (tested): at R = 1 (strictly on-policy), normalize=1 gives exactly the Dr. GRPO gradient
(A = r - r_hat, constant token normaliser) and normalize=2 exactly GRPO's with the population std;
neg_weight = 0 is w-weighted SFT on the positives (online RFT).

Our deviations: the constant normaliser is B * max_new_tokens (as Dr. GRPO's), not the reference code's 1000,
so learning rates carry over from Dr. GRPO; eps (`neg_clamp`) defaults to 1.0, per our design spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from rlpt.algorithms.base import Algorithm, LoopKind, OnlineHooks, ReferenceUse, Share, StepPlan
from rlpt.algorithms.common import (TokenLoss, TokenStats, online_layout, once, ppo_epochs, step_seed,
                                    token_step_plan, weighted_token_loss)
from rlpt.batching import LearnerLayout, correct_by_group, token_rows
from rlpt.config import RlptConfig
from rlpt.types import ScoredRollout, TrainBatch

LOG_RATIO_MAX = 10.0
RQ_MIN, RQ_MAX = 0.02, 0.98


@dataclass(frozen=True)
class NFTLossConfig:
    normalize: int = 1
    neg_weight: float = 1.0
    neg_clamp: float = 1.0


def max_keep_grad(x: Tensor, floor: float) -> Tensor:
    """Value max(x, floor), gradient of x (the straight-through floor of the NFT reference code).

    >>> x = torch.tensor([0.5, 2.0], requires_grad=True)
    >>> y = max_keep_grad(x, 1.0); y.sum().backward()
    >>> y.tolist(), x.grad.tolist()
    ([1.0, 2.0], [1.0, 1.0])
    """
    return x + (x.clamp(min=floor) - x).detach()


def prompt_weight(rq_B: Tensor, normalize: int) -> Tensor:
    """w(q) per row: 1, 1 - rq, or sqrt((1 - rq) / rq).

    >>> prompt_weight(torch.tensor([0.25]), 2).tolist()
    [1.7320507764816284]
    """
    if normalize == 0:
        return torch.ones_like(rq_B)
    if normalize == 1:
        return 1.0 - rq_B
    if normalize == 2:
        return torch.sqrt((1.0 - rq_B) / rq_B)
    raise ValueError(f"NFT normalize must be 0, 1 or 2; got {normalize}")


def nft_token_loss(logp_B_T: Tensor, old_logp_B_T: Tensor, positive_B: Tensor, r_hat_B: Tensor, mask_B_T: Tensor,
                   cfg: NFTLossConfig) -> TokenLoss:
    """Per-token NFT loss (weighted by w(q), masked positions zero), before the constant normaliser."""
    mask = mask_B_T.bool()
    zero = torch.zeros((), dtype=logp_B_T.dtype, device=logp_B_T.device)
    log_ratio = torch.where(mask, logp_B_T - old_logp_B_T, zero)
    ratio = torch.exp(log_ratio.clamp(max=LOG_RATIO_MAX))
    rq = r_hat_B.to(logp_B_T.dtype).clamp(RQ_MIN, RQ_MAX).unsqueeze(1)
    pos_loss = -torch.log(ratio)
    proxy = (1.0 - rq * ratio) / (1.0 - rq)
    neg_loss = -torch.log(max_keep_grad(proxy, cfg.neg_clamp))
    positive = positive_B.bool().unsqueeze(1)
    per_token = torch.where(positive, pos_loss, cfg.neg_weight * neg_loss)
    weighted = prompt_weight(rq, cfg.normalize) * per_token
    loss = torch.where(mask, weighted, zero)
    return TokenLoss(loss_B_T=loss, pg_B_T=loss, kl_B_T=None, clipped_B_T=torch.zeros_like(mask),
                     log_ratio_B_T=log_ratio.detach(), adv_B_T=torch.zeros_like(loss))


def has_signal(r_hat_P: Tensor) -> Tensor:
    """NFT keeps groups with 0 < r_hat < 1 (others give no contrast)."""
    return (r_hat_P > 0) & (r_hat_P < 1)


# ------------------------------------------------------------------------------ the record (rlpt.algorithms.base)
def keep_groups(scored: Sequence[ScoredRollout], cfg: RlptConfig) -> Tensor:
    return has_signal(correct_by_group(scored, cfg.rollout.samples_per_prompt).mean(dim=1))


def build_batch(scored: Sequence[ScoredRollout], cfg: RlptConfig, pad_id: int) -> TrainBatch | None:
    if not scored:
        return None
    G = cfg.rollout.samples_per_prompt
    r_hat_B = correct_by_group(scored, G).mean(dim=1).repeat_interleave(G)
    return token_rows(scored, torch.zeros(len(scored)), pad_id, group_mean_B=r_hat_B)


def batch_token_loss(logp_B_T: Tensor, old_logp_B_T: Tensor, rows: TrainBatch, cfg: RlptConfig) -> TokenLoss:
    c = cfg.algorithm.nft
    assert rows.positive_B is not None and rows.group_mean_B is not None, "NFT rows need correctness and r_hat"
    return nft_token_loss(logp_B_T, old_logp_B_T, rows.positive_B, rows.group_mean_B, rows.loss_mask_B_T,
                          NFTLossConfig(normalize=c.normalize, neg_weight=c.neg_weight, neg_clamp=c.neg_clamp))


def online_hooks(cfg: RlptConfig) -> OnlineHooks:
    return OnlineHooks(keep_groups=lambda scored: keep_groups(scored, cfg),
                       resample_tries=cfg.algorithm.nft.max_resample_tries,
                       build_batch=lambda scored, pad_id: build_batch(scored, cfg, pad_id))


def plan(batch: TrainBatch, layout: LearnerLayout, cfg: RlptConfig, pad_id: int, step: int) -> StepPlan:
    # The constant normaliser B * max_new_tokens of the module docstring is Dr. GRPO's aggregation.
    return token_step_plan(batch, layout, "seq-mean-token-sum-norm", cfg.rollout.max_new_tokens, pad_id,
                           step_seed(cfg.run.seed, step), cfg.learner.ppo_epochs)


def loss(logp_B_T: Tensor, old_logp_B_T: Tensor, share: Share, cfg: RlptConfig) -> tuple[Tensor, TokenStats]:
    return weighted_token_loss(batch_token_loss(logp_B_T, old_logp_B_T, share.rows, cfg), share.rows)


def batch_metrics(batch: TrainBatch) -> dict[str, float]:
    assert batch.positive_B is not None
    return {"nft/neg_frac": float((batch.positive_B == 0).float().mean()), "nft/rows": float(batch.num_rows)}


ALGORITHM = Algorithm(
    name="nft", loop=lambda cfg: LoopKind.ONLINE, steps=lambda cfg: cfg.run.steps,
    reference=lambda cfg: ReferenceUse.NONE, layout=online_layout, plan=plan, passes=ppo_epochs,
    updates_per_step=once, loss=loss, uses_old_logprobs=True, batch_metrics=batch_metrics, online=online_hooks,
    needs_correct=True,
)
