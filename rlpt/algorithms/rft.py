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

from rlpt.algorithms.base import (Algorithm, LoopKind, OnlineHooks, QuotaHooks, ReferenceUse, RoundSpec, Share,
                                  StepPlan)
from rlpt.algorithms.common import (TokenLoss, TokenStats, online_layout, ppo_epochs, step_seed, token_step_plan,
                                    weighted_token_loss)
from rlpt.batching import LearnerLayout, token_rows
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


def max_round_rows(prompts: int, k: int, mode: str) -> int:
    """The most samples a round's SFT set can hold: quotas are k each (uniform), or sum ceil(k d / mean d) over the
    prompts (prop2diff), which is below prompts * (k + 1) since each ceil adds less than 1.

    >>> max_round_rows(128, 2, "uniform"), max_round_rows(128, 2, "prop2diff")
    (256, 384)
    """
    return prompts * (k if mode == "uniform" else k + 1)


# ------------------------------------------------------------------------------ the record (rlpt.algorithms.base)
def keep_groups(scored: Sequence[ScoredRollout], cfg: RlptConfig) -> Tensor:
    G = cfg.rollout.samples_per_prompt
    return torch.tensor([any(s.correct for s in scored[p:p + G]) for p in range(0, len(scored), G)])


def build_batch(scored: Sequence[ScoredRollout], cfg: RlptConfig, pad_id: int) -> TrainBatch | None:
    kept = dedup_correct(scored)
    return token_rows(kept, torch.zeros(len(kept)), pad_id) if kept else None


def loop(cfg: RlptConfig) -> LoopKind:
    return LoopKind.QUOTA_ROUNDS if cfg.algorithm.rft.mode == "rounds" else LoopKind.ONLINE


def steps(cfg: RlptConfig) -> int:
    return cfg.algorithm.rft.rounds if loop(cfg) is LoopKind.QUOTA_ROUNDS else cfg.run.steps


def rows_per_update(cfg: RlptConfig) -> int:
    return cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt


def updates_per_epoch(cfg: RlptConfig) -> int:
    """Rounds mode: learner steps per epoch, fixed in advance so the LR schedule knows its horizon; the round's set
    is split evenly over them (fewer only when it has fewer rows than that)."""
    c = cfg.algorithm.rft
    return math.ceil(max_round_rows(c.prompts_per_round, c.k_correct, c.quota) / rows_per_update(cfg))


def updates_per_step(cfg: RlptConfig) -> int:
    return cfg.algorithm.rft.epochs * updates_per_epoch(cfg) if loop(cfg) is LoopKind.QUOTA_ROUNDS else 1


def schedule_steps(cfg: RlptConfig) -> int:
    """Restarting from base each round rebuilds the optimizer and its schedule: the horizon is one round."""
    rounds = steps(cfg) if cfg.algorithm.rft.restart == "continue" or loop(cfg) is LoopKind.ONLINE else 1
    return rounds * updates_per_step(cfg) * cfg.learner.mini_batches * cfg.learner.ppo_epochs


def online_hooks(cfg: RlptConfig) -> OnlineHooks:
    return OnlineHooks(keep_groups=lambda scored: keep_groups(scored, cfg), resample_tries=0,
                       build_batch=lambda scored, pad_id: build_batch(scored, cfg, pad_id))


def quota_hooks(cfg: RlptConfig) -> QuotaHooks:
    c = cfg.algorithm.rft
    spec = RoundSpec(rounds=c.rounds, prompts_per_round=c.prompts_per_round,
                     samples_per_prompt=cfg.rollout.samples_per_prompt, epochs=c.epochs)
    return QuotaHooks(spec=spec, max_trials=c.max_trials, quotas=lambda fail: quotas(fail, c.k_correct, c.quota),
                      keep=dedup_correct, restart_from_base=c.restart == "base", rows_per_update=rows_per_update(cfg),
                      updates_per_epoch=updates_per_epoch(cfg))


def plan(batch: TrainBatch, layout: LearnerLayout, cfg: RlptConfig, pad_id: int, step: int) -> StepPlan:
    return token_step_plan(batch, layout, "token-mean", None, pad_id, step_seed(cfg.run.seed, step),
                           cfg.learner.ppo_epochs)


def loss(logp_B_T: Tensor, old_logp_B_T: Tensor, share: Share, cfg: RlptConfig) -> tuple[Tensor, TokenStats]:
    return weighted_token_loss(sft_token_loss(logp_B_T, share.rows.loss_mask_B_T), share.rows)


def batch_metrics(batch: TrainBatch) -> dict[str, float]:
    return {"rft/kept": float(batch.num_rows)}


ALGORITHM = Algorithm(
    name="rft", loop=loop, steps=steps, reference=lambda cfg: ReferenceUse.NONE, layout=online_layout, plan=plan,
    passes=ppo_epochs, updates_per_step=updates_per_step, loss=loss, uses_old_logprobs=False,
    batch_metrics=batch_metrics, online=online_hooks, quota=quota_hooks, schedule_steps=schedule_steps,
    needs_correct=True,
)
