"""GRPO: group-relative policy optimisation, with the DAPO and Dr. GRPO options.

Papers
  - DeepSeekMath, Shao et al. 2024, arXiv 2402.03300 (GRPO).
  - DAPO, Yu et al. 2025, arXiv 2503.14476 (clip-higher, dynamic sampling, token-level loss, overlong shaping).
  - Dr. GRPO, "Understanding R1-Zero-Like Training", Liu et al. 2025, arXiv 2503.20783 (no std scaling,
    constant-normalised token sum).

Equations (G samples o_1..o_G of a prompt q, scalar rewards r_i, response tokens t of o_i)
  advantage   A_i = (r_i - mean_j r_j) / (std_j r_j + eps)             scale="group"  (DeepSeekMath, outcome sup.)
              A_i =  r_i - mean_j r_j                                   scale="none"   (Dr. GRPO)
              A_{i,t} = A_i for every response token t of o_i.
  ratio       rho_{i,t} = exp(logp_theta(o_{i,t}) - logp_old(o_{i,t}))
  surrogate   l_{i,t} = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)        (eps_high > eps_low: DAPO)
  KL (k3)     k3_{i,t} = exp(ref - logp) - (ref - logp) - 1 >= 0                    (DeepSeekMath eq. 4)
  token loss  l_{i,t} + beta * k3_{i,t}
  aggregate   token-mean               sum_{i,t} l / sum_i |o_i|                  (DAPO eq. 8)
              seq-mean-token-mean      1/G sum_i (1/|o_i| sum_t l)                (DeepSeekMath eq. 3)
              seq-mean-token-sum-norm  1/(G * L_norm) sum_{i,t} l, L_norm const.  (Dr. GRPO)
  overlong    R_len(L) = 0                                    if L <= L_max - L_buf
                         ((L_max - L_buf) - L) / L_buf * p     if L_max - L_buf < L <= L_max
                         -p                                    if L > L_max                     (DAPO eq. 13)
  dynamic sampling: groups whose rewards are all equal carry no signal (A = 0); the loop drops them and
  samples more (`groups_with_signal` marks them; the resampling itself lives in the loop).

Our deviations (all deliberate)
  - Defaults follow DAPO: eps_high = 0.28, token-mean, beta = 0 (no reference model needed unless beta > 0).
  - std is the sample std (torch default, Bessel-corrected, as in the reference implementations); "population"
    is offered because NFT's normalize=2 equivalence holds against the population std.
  - An all-equal group gets advantage exactly 0 (not (r - mean)/eps, which float rounding of the mean can
    make large), so it contributes no gradient even when the loop keeps it.
  - log(rho) and (ref - logp) are clamped to +-LOG_RATIO_CLAMP before exp: an outlier token cannot produce
    inf, and inf * (A = 0) = NaN. Inside the clamp (|log ratio| <= 20) the maths is exact.
  - Masked positions (prompt, padding) are replaced by 0 before any arithmetic, so inf/NaN stored there leaks
    into neither the loss nor the gradient.
  - The overlong penalty has a magnitude `penalty` (DAPO's is 1) and is added to the verifier reward before
    the advantages are computed.
  - No dual clip (the loss is unbounded for A < 0 and large rho, as in the papers).
  - Aggregation normalises over the rows passed in; with micro-batching the learner must weigh micro-batches
    (e.g. by their token counts for token-mean) to reproduce the full-batch loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from rlpt.algorithms.base import Algorithm, LoopKind, OnlineHooks, ReferenceUse, Share, StepPlan
from rlpt.algorithms.common import (TokenLoss, TokenStats, masked_mean, no_metrics, once, online_layout,
                                    ppo_epochs, step_seed, token_step_plan, weighted_token_loss)
from rlpt.batching import LearnerLayout, aggregation_weights, rewards_by_group, token_rows
from rlpt.config import RlptConfig
from rlpt.types import ScoredRollout, TrainBatch

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 4.9e8: far beyond any useful ratio, far below float32 overflow


def groups_with_signal(rewards_P_G: Tensor) -> Tensor:
    """True for groups whose rewards are not all equal (DAPO dynamic sampling keeps only these).

    >>> groups_with_signal(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).tolist()
    [True, False]
    """
    return (rewards_P_G != rewards_P_G[:, :1]).any(dim=1)


def group_advantages(
    rewards_P_G: Tensor,
    scale: Literal["group", "none"],
    eps: float = 1e-6,
    std: Literal["sample", "population"] = "sample",
) -> Tensor:
    """Per-sample advantages: (r - mean_g) / (std_g + eps) for scale="group", r - mean_g for "none".

    A group whose rewards are all equal gets exactly 0.

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale="none").tolist()
    [[0.5, -0.5, -0.5, 0.5]]
    """
    if rewards_P_G.dim() != 2:
        raise ValueError(f"group_advantages: rewards must be [P, G]; got shape {tuple(rewards_P_G.shape)}")
    if scale not in ("group", "none"):
        raise ValueError(f"group_advantages: scale must be 'group' or 'none'; got {scale!r}")
    if std not in ("sample", "population"):
        raise ValueError(f"group_advantages: std must be 'sample' or 'population'; got {std!r}")
    r = rewards_P_G if rewards_P_G.is_floating_point() else rewards_P_G.float()
    if r.shape[1] < 2:  # a group of one has no baseline: no signal (and the sample std is undefined)
        return torch.zeros_like(r)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = adv / (r.std(dim=1, keepdim=True, correction=1 if std == "sample" else 0) + eps)
    return torch.where(groups_with_signal(r).unsqueeze(1), adv, torch.zeros_like(adv))


def overlong_penalty(lengths_B: Tensor, max_len: int, buffer_len: int, penalty: float) -> Tensor:
    """DAPO soft overlong punishment (added to the reward): 0, then linear down to -penalty, then -penalty.

    >>> overlong_penalty(torch.tensor([6, 8, 10, 11]), max_len=10, buffer_len=4, penalty=1.0).tolist()
    [0.0, -0.5, -1.0, -1.0]
    """
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"overlong_penalty: need 0 < buffer_len <= max_len; got {buffer_len=} {max_len=}")
    if penalty < 0:
        raise ValueError(f"overlong_penalty: penalty is a magnitude and must be >= 0; got {penalty}")
    length = lengths_B.float()
    start = float(max_len - buffer_len)
    linear = (start - length) / buffer_len * penalty
    zero = torch.zeros_like(length)
    shaped = torch.where(length <= start, zero, linear)
    return torch.where(length > max_len, zero - penalty, shaped)


def clipped_surrogate(
    logp_B_T: Tensor, old_logp_B_T: Tensor, adv_B_T: Tensor, eps_low: float, eps_high: float
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate per token: loss = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A).

    Returns (loss_B_T, clipped_B_T) where clipped marks tokens whose clipped branch is active (their gradient
    is zero): A > 0 with rho > 1 + eps_high, or A < 0 with rho < 1 - eps_low.
    """
    log_ratio = (logp_B_T - old_logp_B_T).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv_B_T
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv_B_T
    loss = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        is_clipped = ((adv_B_T > 0) & (ratio > 1.0 + eps_high)) | ((adv_B_T < 0) & (ratio < 1.0 - eps_low))
    return loss, is_clipped


def k3_kl(logp_B_T: Tensor, ref_logp_B_T: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token: exp(d) - d - 1 with d = ref - logp; >= 0."""
    d = (ref_logp_B_T - logp_B_T).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0


def aggregate(loss_B_T: Tensor, mask_B_T: Tensor, mode: LossAgg, norm_len: int | None = None) -> Tensor:
    """Reduce per-token losses to a scalar; masked tokens contribute exactly nothing (see module docstring).

    token-mean: sum(l * m) / sum(m). seq-mean-token-mean: mean over rows with >= 1 token of the row's token mean.
    seq-mean-token-sum-norm (Dr. GRPO): sum(l * m) / (B * norm_len), norm_len a constant such as the maximum
    response length, so a row's weight does not depend on its own length. An all-masked batch gives 0.
    One implementation of the rules: the loss weights the distributed learner uses (rlpt.batching).
    """
    if loss_B_T.shape != mask_B_T.shape:
        raise ValueError(f"aggregate: loss {tuple(loss_B_T.shape)} and mask {tuple(mask_B_T.shape)} differ")
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"aggregate: unknown mode {mode!r}; expected one of {LOSS_AGG_MODES}")
    mask = mask_B_T.bool()
    clean = torch.where(mask, loss_B_T, torch.zeros((), dtype=loss_B_T.dtype, device=loss_B_T.device))
    return (clean * aggregation_weights(mask, mode, norm_len).to(loss_B_T.dtype)).sum()


@dataclass(frozen=True)
class GRPOLossConfig:
    """Loss options (DAPO defaults). `norm_len` is required for loss_agg='seq-mean-token-sum-norm'."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.0
    loss_agg: LossAgg = "token-mean"
    norm_len: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps_low < 1.0 or self.eps_high < 0.0:
            raise ValueError(f"GRPOLossConfig: need 0 <= eps_low < 1 and eps_high >= 0; got {self}")
        if self.beta < 0.0:
            raise ValueError(f"GRPOLossConfig: beta must be >= 0; got {self.beta}")
        if self.loss_agg not in LOSS_AGG_MODES:
            raise ValueError(f"GRPOLossConfig: loss_agg {self.loss_agg!r} not in {LOSS_AGG_MODES}")
        if self.loss_agg == "seq-mean-token-sum-norm" and (self.norm_len is None or self.norm_len <= 0):
            raise ValueError(f"GRPOLossConfig: loss_agg {self.loss_agg!r} needs norm_len > 0; got {self.norm_len}")


@dataclass(frozen=True)
class GRPOStats:
    """Diagnostics of one loss call, over masked (response) tokens. kl_mean is None without a reference.

    With no response tokens at all the means are 0 and ratio_min/max are 1 (nothing moved).
    """

    loss: float
    pg_loss: float
    kl_mean: float | None
    clip_frac: float
    clip_low_frac: float
    clip_high_frac: float
    ratio_mean: float
    ratio_min: float
    ratio_max: float
    num_tokens: float

    def as_metrics(self, prefix: str = "actor/") -> dict[str, float]:
        """Flat metric dict for the writer; None values (absent, not zero) are left out."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items() if v is not None}


def grpo_loss(
    logp_B_T: Tensor,
    old_logp_B_T: Tensor,
    adv_B_T: Tensor,
    mask_B_T: Tensor,
    ref_logp_B_T: Tensor | None,
    cfg: GRPOLossConfig,
) -> tuple[Tensor, GRPOStats]:
    """GRPO loss (surrogate + beta * k3, aggregated per cfg.loss_agg) and its diagnostics."""
    if cfg.beta > 0.0 and ref_logp_B_T is None:
        raise ValueError(f"grpo_loss: beta={cfg.beta} > 0 needs ref_logp_B_T (the reference model's logprobs)")
    mask = mask_B_T.bool()
    t = grpo_token_loss(logp_B_T, old_logp_B_T, adv_B_T, mask, ref_logp_B_T, cfg)
    pg_loss = aggregate(t.pg_B_T, mask, cfg.loss_agg, cfg.norm_len)
    loss = pg_loss
    if t.kl_B_T is not None and cfg.beta > 0.0:
        loss = loss + cfg.beta * aggregate(t.kl_B_T, mask, cfg.loss_agg, cfg.norm_len)
    stats = _stats(loss, pg_loss, t.log_ratio_B_T, t.adv_B_T, t.clipped_B_T, t.kl_B_T, mask)
    return loss, stats


def grpo_token_loss(
    logp_B_T: Tensor,
    old_logp_B_T: Tensor,
    adv_B_T: Tensor,
    mask_B_T: Tensor,
    ref_logp_B_T: Tensor | None,
    cfg: GRPOLossConfig,
) -> TokenLoss:
    """Per-token GRPO loss before aggregation. The distributed learner weights these tokens itself
    (`rlpt.batching.aggregation_weights`) so that micro-batches on several ranks add up to `aggregate`."""
    mask = mask_B_T.bool()
    zero = torch.zeros((), dtype=logp_B_T.dtype, device=logp_B_T.device)

    def clean(x: Tensor) -> Tensor:  # zero the masked positions so their inf/NaN reach no arithmetic
        return torch.where(mask, x, zero)

    logp, old, adv = clean(logp_B_T), clean(old_logp_B_T), clean(adv_B_T)
    pg_B_T, clipped_B_T = clipped_surrogate(logp, old, adv, cfg.eps_low, cfg.eps_high)
    kl_B_T = None if ref_logp_B_T is None else clean(k3_kl(logp, clean(ref_logp_B_T)))
    loss_B_T = pg_B_T if kl_B_T is None or cfg.beta == 0.0 else pg_B_T + cfg.beta * kl_B_T
    return TokenLoss(clean(loss_B_T), clean(pg_B_T), kl_B_T, clipped_B_T & mask, (logp - old).detach(), adv)


@torch.no_grad()
def _stats(
    loss: Tensor,
    pg_loss: Tensor,
    log_ratio_B_T: Tensor,
    adv_B_T: Tensor,
    clipped_B_T: Tensor,
    kl_B_T: Tensor | None,
    mask: Tensor,
) -> GRPOStats:
    ratio = torch.exp(log_ratio_B_T.float().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    n = int(mask.sum())
    clip_low = clipped_B_T & (adv_B_T < 0)
    return GRPOStats(
        loss=float(loss),
        pg_loss=float(pg_loss),
        kl_mean=None if kl_B_T is None else float(masked_mean(kl_B_T.float(), mask)),
        clip_frac=float(masked_mean(clipped_B_T.float(), mask)),
        clip_low_frac=float(masked_mean(clip_low.float(), mask)),
        clip_high_frac=float(masked_mean((clipped_B_T & ~clip_low).float(), mask)),
        ratio_mean=float(masked_mean(ratio, mask)),
        ratio_min=float(ratio[mask].min()) if n else 1.0,
        ratio_max=float(ratio[mask].max()) if n else 1.0,
        num_tokens=float(n),
    )


# ------------------------------------------------------------------------------ the record (rlpt.algorithms.base)
def advantages(scored: Sequence[ScoredRollout], cfg: RlptConfig) -> Tensor:
    """Per-rollout advantages [P*G] (overlong shaping added to rewards first, when enabled)."""
    g = cfg.algorithm.grpo
    return group_advantages(shaped_rewards(scored, cfg), g.scale_rewards).flatten()


def shaped_rewards(scored: Sequence[ScoredRollout], cfg: RlptConfig) -> Tensor:
    """[P, G] rewards, plus DAPO's overlong shaping when `algorithm.grpo.overlong.enabled`."""
    g = cfg.algorithm.grpo
    rewards_P_G = rewards_by_group(scored, cfg.rollout.samples_per_prompt)
    if g.overlong.enabled:
        lengths = torch.tensor([len(s.rollout.response_ids_T) for s in scored])
        shaping = overlong_penalty(lengths, cfg.rollout.max_new_tokens, g.overlong.buffer_len, g.overlong.penalty)
        rewards_P_G = rewards_P_G + shaping.view_as(rewards_P_G)
    return rewards_P_G


def keep_groups(scored: Sequence[ScoredRollout], cfg: RlptConfig) -> Tensor:
    rewards_P_G = rewards_by_group(scored, cfg.rollout.samples_per_prompt)
    if cfg.algorithm.grpo.dynamic_sampling:
        return groups_with_signal(rewards_P_G)
    return torch.ones(rewards_P_G.shape[0], dtype=torch.bool)


def build_batch(scored: Sequence[ScoredRollout], cfg: RlptConfig, pad_id: int) -> TrainBatch | None:
    return token_rows(scored, advantages(scored, cfg), pad_id) if scored else None


def loss_config(cfg: RlptConfig) -> GRPOLossConfig:
    g = cfg.algorithm.grpo
    return GRPOLossConfig(eps_low=g.eps_low, eps_high=g.eps_high, beta=g.beta, loss_agg=g.loss_agg,
                          norm_len=cfg.rollout.max_new_tokens)


def batch_token_loss(logp_B_T: Tensor, old_logp_B_T: Tensor, rows: TrainBatch, cfg: RlptConfig) -> TokenLoss:
    return grpo_token_loss(logp_B_T, old_logp_B_T, rows.advantages_B_T, rows.loss_mask_B_T, rows.ref_logprobs_B_T,
                           loss_config(cfg))


def online_hooks(cfg: RlptConfig) -> OnlineHooks:
    g = cfg.algorithm.grpo
    return OnlineHooks(keep_groups=lambda scored: keep_groups(scored, cfg),
                       resample_tries=g.max_resample_tries if g.dynamic_sampling else 0,
                       build_batch=lambda scored, pad_id: build_batch(scored, cfg, pad_id))


def plan(batch: TrainBatch, layout: LearnerLayout, cfg: RlptConfig, pad_id: int, step: int) -> StepPlan:
    return token_step_plan(batch, layout, cfg.algorithm.grpo.loss_agg, cfg.rollout.max_new_tokens, pad_id,
                           step_seed(cfg.run.seed, step), cfg.learner.ppo_epochs)


def loss(logp_B_T: Tensor, old_logp_B_T: Tensor, share: Share, cfg: RlptConfig) -> tuple[Tensor, TokenStats]:
    return weighted_token_loss(batch_token_loss(logp_B_T, old_logp_B_T, share.rows, cfg), share.rows)


def reference(cfg: RlptConfig) -> ReferenceUse:
    return ReferenceUse.FROZEN if cfg.algorithm.grpo.beta > 0 else ReferenceUse.NONE


ALGORITHM = Algorithm(
    name="grpo", loop=lambda cfg: LoopKind.ONLINE, steps=lambda cfg: cfg.run.steps, reference=reference,
    layout=online_layout, plan=plan, passes=ppo_epochs, updates_per_step=once, loss=loss, uses_old_logprobs=True,
    batch_metrics=no_metrics, online=online_hooks,
)
