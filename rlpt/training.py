"""The learner rank's one micro-batch loop, for every algorithm: for each planned optimizer step, forward each
micro-batch, take the algorithm's loss, backward, step; add up the algorithm's stats and the rollout-vs-learner
logprob gap. Pure torch: the DeepSpeed engine sits behind the small `Trainee` protocol (actors/learner.py), so the
loop runs on a plain torch model in the unit tests.

Loss scaling: each micro-batch's loss already carries its share of the mini-batch normalisation (loss weights, or
`Share.norm`); the trainee multiplies by the number of ranks, whose gradients are averaged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from rlpt.algorithms.base import Algorithm, LossStats, Share, StepPlan
from rlpt.algorithms.off_policy import (CORRECTIONS, Corrected, behaviour_kl, behaviour_trust_region, log_is_weights,
                                        within_trust_region)
from rlpt.batching import select_rows
from rlpt.config import RlptConfig


class Trainee(Protocol):
    dropout: bool  # its train-mode forward samples dropout, so it is not the eval-mode one (dropout_active)

    def logprobs(self, input_ids_B_T: Tensor, attention_mask_B_T: Tensor) -> Tensor: ...  # with grad

    def set_train(self, train: bool) -> None: ...

    def backward_step(self, loss: Tensor) -> None: ...  # backward; the optimizer steps at the mini-batch boundary

    def grad_norm(self) -> float: ...

    def lr(self) -> float: ...

    def optimizer_steps(self) -> int: ...  # taken since this schedule began


@dataclass(frozen=True)
class RankReport:
    """One rank's account of a training step. Gap sums cover the first optimizer step's micro-batches only: the
    optimizer has not stepped yet there, so they compare the policy that generated the rollouts with itself."""

    stats: LossStats
    gap: float = 0.0
    gap_max: float = 0.0
    gap_tokens: float = 0.0
    grad_norms: list[float] = field(default_factory=list)
    lr: float = 0.0
    optimizer_steps: int = 0
    off_policy: "OffPolicySums | None" = None  # with an off-policy correction
    seconds: float = 0.0  # wall time of the rank's share (timing/train_learner: the rest of timing/train is overhead)


@dataclass(frozen=True)
class OffPolicySums:
    """Sums over response tokens of the correction's weights (ranks add up; the maximum is maxed), so the group
    reports `off_policy/*` over the whole batch."""

    tokens: float = 0.0
    weight: float = 0.0
    weight_max: float = 0.0
    changed: float = 0.0
    kl: float = 0.0

    @torch.no_grad()
    def add(self, log_w_B_T: Tensor, c: Corrected, mask_B_T: Tensor) -> "OffPolicySums":
        mask = mask_B_T.bool()
        w = torch.exp(log_w_B_T[mask])
        return OffPolicySums(self.tokens + float(mask.sum()), self.weight + float(w.sum()),
                             max(self.weight_max, float(w.max()) if w.numel() else 0.0),
                             self.changed + float(c.changed_B_T[mask].sum()),
                             self.kl + float(behaviour_kl(log_w_B_T)[mask].sum()))

    def merged(self, other: "OffPolicySums") -> "OffPolicySums":
        return OffPolicySums(self.tokens + other.tokens, self.weight + other.weight,
                             max(self.weight_max, other.weight_max), self.changed + other.changed,
                             self.kl + other.kl)

    def as_metrics(self) -> dict[str, float]:
        n = max(self.tokens, 1.0)
        return {"off_policy/is_weight_mean": self.weight / n if self.tokens else 1.0,
                "off_policy/is_weight_max": self.weight_max if self.tokens else 1.0,
                "off_policy/corrected_frac": self.changed / n, "off_policy/behaviour_kl": self.kl / n}


def micro_batches(rows: Share, micro: int) -> list[Share]:
    return [Share(select_rows(rows.rows, torch.arange(i, min(i + micro, rows.rows.num_rows))), rows.norm)
            for i in range(0, rows.rows.num_rows, micro)]


def dropout_active(model: torch.nn.Module) -> bool:
    """Whether the model's train-mode forward differs from its eval-mode one: a dropout module with p > 0 (LoRA's
    too), or a config entry named *drop* or *jitter* above 0 (HF attention applies `attention_dropout`
    functionally, with no module; GPT-2's `resid_pdrop`, a `layerdrop`, Mixtral's `router_jitter_noise`). Errs
    towards True: a False lets train_rank take a training forward's logprobs as the policy's own.

    >>> dropout_active(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0)))
    False
    >>> dropout_active(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    True
    """
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True

    def positive(entries: object) -> bool:
        if not isinstance(entries, dict):
            return False
        return any(positive(v) if isinstance(v, dict) else (
            isinstance(k, str) and ("drop" in k or "jitter" in k) and isinstance(v, (int, float)) and v > 0)
            for k, v in entries.items())
    config = getattr(model, "config", None)
    return positive(config.to_dict()) if hasattr(config, "to_dict") else False


@torch.no_grad()
def recompute_old_logprobs(trainee: Trainee, plan: StepPlan, micro: int) -> list[list[Tensor | None]]:
    """The current policy's logprobs of every micro-batch, before any update (learner.old_logprobs: recompute;
    the off-policy correction's proximal policy). Those of the first mini-batch trained are left None when the
    trainee has no dropout: no update precedes its training forward, whose logprobs (detached) are these, so
    train_rank takes them from there instead of running that forward twice (with one mini-batch, no forward here)."""
    first = None if trainee.dropout or not plan.order else plan.order[0]
    trainee.set_train(False)
    return [[None if k == first else trainee.logprobs(m.rows.input_ids_B_T, m.rows.attention_mask_B_T)
             for m in micro_batches(mb[0], micro)] for k, mb in enumerate(plan.mini_batches)]


def correction_of(algo: Algorithm, cfg: RlptConfig) -> Callable[[Tensor, Tensor, Tensor], Corrected] | None:
    """The off-policy correction of this run, (log w, advantages, mask) -> per-token weights
    (rlpt.algorithms.off_policy), or None: it is on when samples may be stale (rollout.max_staleness >= 1), the
    loss takes a ratio, and learner.off_policy.correction is not none."""
    o = cfg.learner.off_policy
    if cfg.rollout.max_staleness == 0 or not algo.uses_old_logprobs or o.correction == "none":
        return None
    fn = CORRECTIONS[o.correction]

    def correct(log_w: Tensor, adv: Tensor, mask: Tensor) -> Corrected:
        c = fn(log_w, mask, o.cap)
        if not o.trust_region:
            return c
        return within_trust_region(c, behaviour_trust_region(log_w, adv, mask, o.clip_low, o.clip_high))
    return correct


def train_rank(algo: Algorithm, cfg: RlptConfig, trainee: Trainee, plan: StepPlan, micro: int) -> RankReport:
    """This rank's part of one training step: `plan` holds this rank's share of each mini-batch (`for_rank`).

    With an off-policy correction (decoupled PPO) the ratio is taken against the proximal logprobs (a learner
    forward before any update) and every token's loss weight is multiplied by its correction weight c_t, computed
    from pi_prox / pi_behaviour (the engine's logprobs of the sampled tokens)."""
    correct = correction_of(algo, cfg)
    olds = (recompute_old_logprobs(trainee, plan, micro) if algo.uses_old_logprobs and (
        cfg.learner.old_logprobs == "recompute" or correct is not None) else None)
    parts: list[LossStats] = []
    gap = gap_max = gap_tokens = 0.0
    off = OffPolicySums()
    grad_norms: list[float] = []
    trainee.set_train(True)
    for j, m in enumerate(plan.order):
        for i, share in enumerate(micro_batches(plan.mini_batches[m][0], micro)):
            rows = share.rows
            logp = trainee.logprobs(rows.input_ids_B_T, rows.attention_mask_B_T)
            old = rows.rollout_logprobs_B_T if olds is None else olds[m][i]
            if old is None and olds is not None:  # the first mini-batch (recompute_old_logprobs): no update yet
                old = olds[m][i] = logp.detach()
            if correct is not None:
                log_w = log_is_weights(old, rows.rollout_logprobs_B_T, rows.loss_mask_B_T)
                c = correct(log_w, rows.advantages_B_T, rows.loss_mask_B_T)
                assert rows.loss_weights_B_T is not None, "token rows carry loss weights"
                share = Share(replace(rows, loss_weights_B_T=rows.loss_weights_B_T * c.weight_B_T), share.norm)
                if j == 0:  # the first pass sees every token once
                    off = off.add(log_w, c, rows.loss_mask_B_T)
            loss, stats = algo.loss(logp, old, share, cfg)
            trainee.backward_step(loss)
            parts.append(stats)
            if j == 0:
                mask = rows.loss_mask_B_T.bool()
                with torch.no_grad():
                    d = (logp.detach()[mask] - rows.rollout_logprobs_B_T[mask]).abs()
                if d.numel():
                    gap, gap_max, gap_tokens = gap + float(d.sum()), max(gap_max, float(d.max())), gap_tokens + d.numel()
        grad_norms.append(trainee.grad_norm())
    return RankReport(functools.reduce(lambda a, b: a.merged(b), parts), gap, gap_max, gap_tokens, grad_norms,
                      trainee.lr(), trainee.optimizer_steps(), None if correct is None else off)


def step_metrics(reports: Sequence[RankReport], plan: StepPlan) -> dict[str, float]:
    """The group's metrics of one training step: the algorithm's (its stats summed over ranks), the logprob gap,
    the last optimizer step's grad norm and LR, and the optimizer steps taken so far in this LR schedule."""
    stats = functools.reduce(lambda a, b: a.merged(b), [r.stats for r in reports])
    gap_tokens = sum(r.gap_tokens for r in reports)
    first = reports[0]
    offs = [r.off_policy for r in reports if r.off_policy is not None]
    off = functools.reduce(lambda a, b: a.merged(b), offs).as_metrics() if offs else {}
    return {
        **off,
        **stats.as_metrics(plan.passes, plan.optimizer_steps),
        "actor/grad_norm": first.grad_norms[-1] if first.grad_norms else 0.0,
        "actor/lr": first.lr,
        "logprob_gap/mean": sum(r.gap for r in reports) / max(gap_tokens, 1.0),
        "logprob_gap/max": max(r.gap_max for r in reports),
        "learner/optimizer_steps": float(first.optimizer_steps),
        "timing/train_learner": max(r.seconds for r in reports),
    }
