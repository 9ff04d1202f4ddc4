"""Tensor helpers shared by the algorithm modules: masked reductions and per-token logprobs / entropy.

Alignment convention (same as `TrainBatch`): for a row of token ids `ids[0..T-1]`, output position t holds a
statistic of the distribution that produced token t, i.e. the model's prediction from `logits[t - 1]`.
Position 0 has no predictor and is 0.0; the loss mask never covers it (it is a prompt token).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor

from rlpt.algorithms.base import OnlineHooks, Share, StepPlan
from rlpt.batching import LearnerLayout, learner_layout, plan_mini_batches, rewards_by_group, token_rows
from rlpt.types import ScoredRollout, TrainBatch

if TYPE_CHECKING:
    from rlpt.config import RlptConfig


@dataclass(frozen=True)
class TokenLoss:
    """Per-token loss of any token-level algorithm, masked positions zeroed, before aggregation (the learner
    weights tokens itself: rlpt.batching.aggregation_weights). `pg_B_T` is the policy part, `kl_B_T` the KL part
    (None without a reference), `clipped_B_T` marks clipped tokens (all False where no clipping applies)."""

    loss_B_T: Tensor
    pg_B_T: Tensor
    kl_B_T: Tensor | None
    clipped_B_T: Tensor
    log_ratio_B_T: Tensor
    adv_B_T: Tensor


@dataclass(frozen=True)
class TokenStats:
    """Sums over the response tokens of token-level losses (GRPO family, NFT, RFT); ranks and micro-batches add
    up (maxima are maxed) and the metrics divide once."""

    tokens: float = 0.0
    loss: float = 0.0
    clipped: float = 0.0
    kl: float = 0.0
    ratio: float = 0.0
    ratio_max: float = 0.0

    def merged(self, other: "TokenStats") -> "TokenStats":
        return replace(self, **{f.name: (max if f.name == "ratio_max" else float.__add__)(
            getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    def as_metrics(self, passes: int, optimizer_steps: int) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        return {"actor/loss": self.loss / optimizer_steps, "actor/clip_frac": self.clipped / n,
                "actor/kl": self.kl / n, "actor/ratio_mean": self.ratio / n, "actor/ratio_max": self.ratio_max,
                "actor/tokens": self.tokens / passes}


def weighted_token_loss(t: TokenLoss, rows: TrainBatch) -> tuple[Tensor, TokenStats]:
    """A micro-batch's share of the mini-batch loss: sum(token_loss * loss_weight) (the weights normalise over the
    whole mini-batch, rlpt.batching.aggregation_weights), with its token statistics."""
    assert rows.loss_weights_B_T is not None, "token rows need loss weights (rlpt.batching.plan_mini_batches)"
    loss = (t.loss_B_T * rows.loss_weights_B_T).sum()
    with torch.no_grad():
        mask = rows.loss_mask_B_T.bool()
        n = float(mask.sum())
        ratio = torch.exp(t.log_ratio_B_T[mask])
        stats = TokenStats(tokens=n, loss=float(loss), clipped=float(t.clipped_B_T.sum()),
                           kl=0.0 if t.kl_B_T is None else float(t.kl_B_T[mask].sum()), ratio=float(ratio.sum()),
                           ratio_max=float(ratio.max()) if n else 0.0)
    return loss, stats


def online_layout(cfg: "RlptConfig") -> LearnerLayout:
    """The layout of the online loop: one step's P x G rows."""
    return learner_layout(cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt, cfg.learner)


def ppo_epochs(cfg: "RlptConfig") -> int:
    return cfg.learner.ppo_epochs


def once(cfg: "RlptConfig") -> int:
    """One learner update per loop step."""
    return 1


def no_metrics(batch: TrainBatch) -> dict[str, float]:
    return {}


def advantage_hooks(cfg: "RlptConfig", advantages_P_G: Callable[[Tensor], Tensor]) -> OnlineHooks:
    """Online hooks of an algorithm that keeps every group and trains token rows with per-sample advantages
    computed from the [P, G] rewards (no dynamic sampling)."""
    G = cfg.rollout.samples_per_prompt

    def build(scored: Sequence[ScoredRollout], pad_id: int) -> TrainBatch | None:
        if not scored:
            return None
        return token_rows(scored, advantages_P_G(rewards_by_group(scored, G)).flatten(), pad_id)

    return OnlineHooks(keep_groups=lambda scored: torch.ones(len(scored) // G, dtype=torch.bool), resample_tries=0,
                       build_batch=build)


def step_seed(run_seed: int, step: int) -> int:
    """The seed of a training step's row shuffle (mini-batch assignment)."""
    return run_seed * 100_003 + step


def token_step_plan(batch: TrainBatch, layout: LearnerLayout, mode: str, norm_len: int | None, pad_id: int,
                    seed: int, passes: int) -> StepPlan:
    """Token rows: one shuffle into mini-batches with aggregation weights (rlpt.batching.plan_mini_batches),
    trained `passes` times (PPO epochs) in the same order."""
    mbs = plan_mini_batches(batch, layout, mode, norm_len, pad_id, seed)
    return StepPlan([[Share(rows) for rows in mb] for mb in mbs], list(range(len(mbs))) * passes, passes)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is true (or nonzero). Masked positions contribute exactly nothing.

    `torch.where` (not `x * mask`) so inf/NaN at masked positions neither leak into the value (inf * 0 = NaN)
    nor into the gradient (the where backward routes an exact 0 to the unselected branch).
    """
    selected = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is true; 0.0 (still part of the graph) when none are.

    >>> masked_mean(torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([True, True, False])).item()
    1.5
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


LOGPROB_CHUNK_ELEMENTS = 2**25  # float32 logits elements per chunk of rows (128 MiB): bounds the temporaries


def token_logprobs(logits_B_T_V: Tensor, input_ids_B_T: Tensor, chunk_elements: int = LOGPROB_CHUNK_ELEMENTS
                   ) -> Tensor:
    """Log-probability of each token under the model, aligned with `input_ids_B_T`.

    out[b, t] = log p(ids[b, t] | ids[b, <t]) = log_softmax(logits[b, t - 1])[ids[b, t]] for t >= 1; out[b, 0] = 0.
    Computed in float32 whatever the logits dtype (bf16 log-softmax over a 150k vocabulary loses ~2 decimal
    digits, which shows up as a fake rollout-vs-learner logprob gap). Vectorised over chunks of rows of at most
    `chunk_elements` logits (at least one row), and the log-softmax is never materialised (gather minus logsumexp),
    so under `torch.no_grad()` (old / reference logprobs) the float32 temporary is one chunk. With grad, autograd
    keeps each chunk's float32 copy for backward; bound that by micro-batching.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    >>> token_logprobs(logits, torch.tensor([[1, 0, 1]])).exp()
    tensor([[1.0000, 0.5000, 0.1192]])
    """
    if logits_B_T_V.dim() != 3 or input_ids_B_T.shape != logits_B_T_V.shape[:2]:
        raise ValueError(
            f"token_logprobs: expected logits [B, T, V] and ids [B, T]; got {tuple(logits_B_T_V.shape)} "
            f"and {tuple(input_ids_B_T.shape)}"
        )
    B, T, V = logits_B_T_V.shape
    if B == 0:
        return logits_B_T_V.new_zeros(input_ids_B_T.shape, dtype=torch.float32)
    rows = max(1, chunk_elements // max(1, (T - 1) * V))
    parts: list[Tensor] = []
    for start in range(0, B, rows):
        pred_C_T_V = logits_B_T_V[start:start + rows, :-1].float()  # logits[t - 1] predict ids[t]
        target_C_T = input_ids_B_T[start:start + rows, 1:].long()
        picked_C_T = torch.gather(pred_C_T_V, -1, target_C_T.unsqueeze(-1)).squeeze(-1)
        parts.append(picked_C_T - torch.logsumexp(pred_C_T_V, dim=-1))
    logp_B_Tm1 = parts[0] if len(parts) == 1 else torch.cat(parts)
    first_B_1 = logp_B_Tm1.new_zeros((B, 1))
    return torch.cat([first_B_1, logp_B_Tm1], dim=1)


def entropy_from_logits(logits_B_T_V: Tensor) -> Tensor:
    """Entropy (nats) of the predictive distribution, aligned like `token_logprobs`.

    out[b, t] = H(softmax(logits[b, t - 1])) for t >= 1 (the distribution token t was sampled from); out[b, 0] = 0.
    H = logsumexp(z) - sum_v softmax(z)_v z_v, in float32, one row at a time. Meant for metrics: call it under
    `torch.no_grad()` unless an entropy bonus is wanted.
    """
    if logits_B_T_V.dim() != 3:
        raise ValueError(f"entropy_from_logits: expected logits [B, T, V]; got {tuple(logits_B_T_V.shape)}")
    if logits_B_T_V.shape[0] == 0:
        return logits_B_T_V.new_zeros(logits_B_T_V.shape[:2], dtype=torch.float32)
    rows: list[Tensor] = []
    for logits_T_V in logits_B_T_V:
        z_T_V = logits_T_V[:-1].float()
        probs_T_V = torch.softmax(z_T_V, dim=-1)
        # p * z with p = 0 and z = -inf (a vocab entry masked out) is NaN; its true contribution is 0.
        p_z_T_V = torch.where(probs_T_V > 0, probs_T_V * z_T_V, torch.zeros((), device=z_T_V.device))
        rows.append(torch.logsumexp(z_T_V, dim=-1) - p_z_T_V.sum(dim=-1))
    ent_B_Tm1 = torch.stack(rows)
    return torch.cat([ent_B_Tm1.new_zeros((ent_B_Tm1.shape[0], 1)), ent_B_Tm1], dim=1)
