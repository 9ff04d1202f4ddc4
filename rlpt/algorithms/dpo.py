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
from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rlpt.algorithms.base import Algorithm, LoopKind, PairHooks, ReferenceUse, RoundSpec, Share, StepPlan
from rlpt.algorithms.common import no_metrics, once, step_seed
from rlpt.batching import LearnerLayout, pair_layout, pair_rows, plan_pair_batches
from rlpt.config import RlptConfig
from rlpt.types import PreferencePair, ScoredRollout, TrainBatch


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


@dataclass(frozen=True)
class PairStats:
    """Sums over the real pairs of micro-batches and ranks (reduced once by `as_metrics`)."""

    pairs: float = 0.0
    loss: float = 0.0  # sum of per-pair losses (DPO + IRPO term)
    accurate: float = 0.0  # pairs with margin > 0 (preference accuracy)
    margin: float = 0.0

    def merged(self, other: "PairStats") -> "PairStats":
        return replace(self, **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_metrics(self, passes: int, optimizer_steps: int) -> dict[str, float]:
        n = max(self.pairs, 1.0)
        return {"dpo/loss": self.loss / n, "dpo/margin": self.margin / n, "dpo/accuracy": self.accurate / n}


def pair_loss(logp_B_T: Tensor, share: Share, beta: float, label_smoothing: float, nll_alpha: float
              ) -> tuple[Tensor, PairStats]:
    """A micro-batch's part of the mini-batch loss (rows 2i chosen, 2i+1 rejected): the sum of its real pairs'
    losses over `share.norm`, the mini-batch's number of real pairs; padding pairs have no tokens and count 0.

    >>> rows = pair_rows_for_doctest()
    >>> loss, stats = pair_loss(rows.ref_logprobs_B_T.clone(), Share(rows, norm=1.0), 0.1, 0.0, 0.0)
    >>> round(loss.item(), 6), stats.pairs, stats.margin   # policy == reference: log 2
    (0.693147, 1.0, 0.0)
    """
    rows = share.rows
    assert rows.ref_logprobs_B_T is not None, "DPO rows need reference logprobs"
    mask = rows.loss_mask_B_T.bool()
    seq = torch.where(mask, logp_B_T, torch.zeros(())).sum(dim=1)
    ref = torch.where(mask, rows.ref_logprobs_B_T, torch.zeros(())).sum(dim=1)
    valid = mask[0::2].any(dim=1).float()
    losses, margin = dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta, label_smoothing)
    if nll_alpha > 0:
        losses = losses + nll_alpha * winner_nll(seq[0::2], mask[0::2].sum(dim=1))
    loss = (losses * valid).sum() / share.norm
    with torch.no_grad():
        stats = PairStats(pairs=float(valid.sum()), loss=float((losses * valid).sum()),
                          accurate=float(((margin > 0).float() * valid).sum()), margin=float((margin * valid).sum()))
    return loss, stats


def pair_rows_for_doctest() -> TrainBatch:
    """One pair (prompt 1 token, chosen 2 tokens, rejected 1 token) with reference logprobs."""
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    ids = torch.tensor([[5, 6, 7], [5, 8, 0]])
    return TrainBatch(input_ids_B_T=ids, attention_mask_B_T=mask.long() + torch.tensor([[1, 0, 0], [1, 0, 0]]),
                      loss_mask_B_T=mask, advantages_B_T=torch.zeros(2, 3), rollout_logprobs_B_T=torch.zeros(2, 3),
                      ref_logprobs_B_T=torch.tensor([[0.0, -1.0, -2.0], [0.0, -3.0, 0.0]]))


# ------------------------------------------------------------------------------ the record (rlpt.algorithms.base)
def round_spec(cfg: RlptConfig) -> RoundSpec:
    d = cfg.algorithm.dpo
    return RoundSpec(rounds=d.rounds, prompts_per_round=d.prompts_per_round, samples_per_prompt=d.samples_per_prompt,
                     epochs=d.epochs)


def pair_hooks(cfg: RlptConfig) -> PairHooks:
    d = cfg.algorithm.dpo
    return PairHooks(spec=round_spec(cfg),
                     make_pairs=lambda scored, rng: pair_up(scored, d.samples_per_prompt, d.pairing, rng),
                     build_batch=pair_rows)


def plan(batch: TrainBatch, layout: LearnerLayout, cfg: RlptConfig, pad_id: int, step: int) -> StepPlan:
    """Each epoch its own shuffle of the pairs into mini-batches; each mini-batch's loss is the mean over its real
    pairs."""
    minis: list[list[Share]] = []
    for epoch in range(cfg.algorithm.dpo.epochs):
        shares, counts = plan_pair_batches(batch, layout, pad_id, seed=step_seed(cfg.run.seed, step) * 101 + epoch)
        minis += [[Share(rows, norm=max(n, 1)) for rows in mb] for mb, n in zip(shares, counts)]
    return StepPlan(minis, list(range(len(minis))), cfg.algorithm.dpo.epochs)


def loss(logp_B_T: Tensor, old_logp_B_T: Tensor, share: Share, cfg: RlptConfig) -> tuple[Tensor, PairStats]:
    d = cfg.algorithm.dpo
    return pair_loss(logp_B_T, share, d.beta, d.label_smoothing, d.nll_alpha)


def reference(cfg: RlptConfig) -> ReferenceUse:
    return ReferenceUse.FOLLOWS_POLICY if cfg.algorithm.dpo.reference == "previous" else ReferenceUse.FROZEN


ALGORITHM = Algorithm(
    name="dpo", loop=lambda cfg: LoopKind.PAIR_ROUNDS, steps=lambda cfg: cfg.algorithm.dpo.rounds,
    reference=reference, layout=lambda cfg: pair_layout(cfg.algorithm.dpo.prompts_per_round, cfg.learner),
    plan=plan, passes=lambda cfg: cfg.algorithm.dpo.epochs, updates_per_step=once, loss=loss,
    uses_old_logprobs=False, batch_metrics=no_metrics, pairs=pair_hooks,
    needs_correct=True,
)
