"""From scored rollouts to learner rows: group rewards, advantages, right-padded token rows, loss weights, and the
fixed row layout the learner ranks need (same number of micro-batches on every rank, every step).

Loss weights make distributed aggregation exact: the loss of a mini-batch is sum(token_loss * w), with w chosen so
that it equals `grpo.aggregate(loss, mask, mode)` over the whole mini-batch, however its rows are split over ranks
and micro-batches (padding rows get w = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from rlpt.config import LearnerConfig
from rlpt.types import PreferencePair, ScoredRollout, TrainBatch


def rewards_by_group(scored: Sequence[ScoredRollout], group_size: int) -> torch.Tensor:
    """[P, G] rewards; `scored` must hold whole groups in order (prompt p's samples at p*G .. p*G+G-1)."""
    if len(scored) % group_size:
        raise ValueError(f"{len(scored)} rollouts do not form whole groups of {group_size}")
    for p in range(0, len(scored), group_size):
        uids = {s.rollout.prompt.uid for s in scored[p:p + group_size]}
        if len(uids) != 1:
            raise ValueError(f"rollouts {p}..{p + group_size - 1} mix prompts {sorted(uids)}; expected one group")
    return torch.tensor([s.reward for s in scored], dtype=torch.float32).view(-1, group_size)


def correct_by_group(scored: Sequence[ScoredRollout], group_size: int) -> torch.Tensor:
    """[P, G] correctness as 0/1 floats (`correct is True`; None and False count as not correct)."""
    rewards_by_group(scored, group_size)  # validates the grouping
    return torch.tensor([1.0 if s.correct else 0.0 for s in scored]).view(-1, group_size)


def token_rows(scored: Sequence[ScoredRollout], advantages_B: torch.Tensor, pad_id: int,
               group_mean_B: torch.Tensor | None = None) -> TrainBatch:
    """Right-padded rows prompt + response. Loss mask, advantages and rollout logprobs sit on response tokens;
    `positive_B` is each row's correctness, `group_mean_B` its group's correct rate (when given). Rows are built as
    Python lists and converted once per tensor: a tensor per row cost ~2 ms a step for 128 short rows (the
    asynchronous loop builds batches on a driver thread, where that time is taken from the learner's)."""
    prompts = [s.rollout.prompt.prompt_ids for s in scored]
    lens = [len(p) + len(s.rollout.response_ids_T) for p, s in zip(prompts, scored)]
    T = max(lens)
    ids, mask, logp = [], [], []
    for p, s, n in zip(prompts, scored, lens):
        r, pad = s.rollout, T - n
        ids.append([*p, *r.response_ids_T, *[pad_id] * pad])
        before, after = [0.0] * len(p), [0.0] * pad
        # Observation tokens of a multi-turn trajectory are context, not actions: no loss, no advantage.
        mask.append([*before, *(r.loss_mask_T or [1.0] * len(r.response_ids_T)), *after])
        logp.append([*before, *r.logprobs_T, *after])
        if len(mask[-1]) != T or len(logp[-1]) != T:
            raise ValueError(f"rollout {r.prompt.uid}#{r.sample_index}: {len(r.response_ids_T)} response tokens but "
                             f"{len(r.logprobs_T)} logprobs and {len(r.loss_mask_T)} loss-mask entries")
    mask_B_T = torch.tensor(mask, dtype=torch.float32)
    attn = (torch.arange(T) < torch.tensor(lens).view(-1, 1)).long()
    adv = advantages_B.view(-1, 1).float() * mask_B_T
    positive = torch.tensor([1.0 if s.correct else 0.0 for s in scored])
    return TrainBatch(input_ids_B_T=torch.tensor(ids, dtype=torch.long), attention_mask_B_T=attn,
                      loss_mask_B_T=mask_B_T, advantages_B_T=adv,
                      rollout_logprobs_B_T=torch.tensor(logp, dtype=torch.float32),
                      loss_weights_B_T=torch.zeros_like(mask_B_T), positive_B=positive, group_mean_B=group_mean_B)


def aggregation_weights(mask_B_T: torch.Tensor, mode: str, norm_len: int | None) -> torch.Tensor:
    """Loss weights w: the mini-batch loss is sum(loss * w) for any per-token loss (the one implementation of the
    aggregation rules; `rlpt.algorithms.grpo.aggregate` uses it for a whole batch)."""
    m = mask_B_T.float()
    if mode == "token-mean":
        return m / m.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        rows = m.sum(dim=1, keepdim=True)
        nonempty = (rows > 0).sum().clamp(min=1)
        return m / rows.clamp(min=1.0) / nonempty
    if mode == "seq-mean-token-sum-norm":
        if norm_len is None or norm_len <= 0:
            raise ValueError(f"loss aggregation 'seq-mean-token-sum-norm' needs a positive constant norm_len (e.g. "
                             f"the max response length); got norm_len={norm_len!r}")
        return m / (m.shape[0] * norm_len)
    raise ValueError(f"unknown loss aggregation {mode!r}")


@dataclass(frozen=True)
class LearnerLayout:
    """Rows per optimizer step and how they spread: K ranks x `micro_per_rank` micro-batches of `micro` rows."""

    ranks: int
    mini_batches: int
    micro: int
    micro_per_rank: int

    @property
    def rows_per_mini_batch(self) -> int:
        return self.ranks * self.micro * self.micro_per_rank


def learner_layout(rows_per_step: int, cfg: LearnerConfig) -> LearnerLayout:
    per_mini = math.ceil(rows_per_step / cfg.mini_batches)
    per_rank = math.ceil(per_mini / cfg.num_ranks)
    micro = min(cfg.micro_batch_size, per_rank)
    return LearnerLayout(cfg.num_ranks, cfg.mini_batches, micro, math.ceil(per_rank / micro))


def select_rows(batch: TrainBatch, idx: torch.Tensor) -> TrainBatch:
    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.index_select(0, idx)

    return TrainBatch(*(take(getattr(batch, f)) for f in TrainBatch.__dataclass_fields__))  # type: ignore[arg-type]


def pad_rows(batch: TrainBatch, rows: int, pad_id: int) -> TrainBatch:
    """Append rows that carry no loss (mask 0, weight 0) up to `rows`."""
    extra = rows - batch.num_rows
    if extra < 0:
        raise ValueError(f"batch has {batch.num_rows} rows, more than the layout's {rows}")
    if extra == 0:
        return batch

    def grow(name: str, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        fill = pad_id if name == "input_ids_B_T" else 0
        return torch.cat([t, torch.full((extra, *t.shape[1:]), fill, dtype=t.dtype)])

    return TrainBatch(**{f: grow(f, getattr(batch, f)) for f in TrainBatch.__dataclass_fields__})


def plan_mini_batches(batch: TrainBatch, layout: LearnerLayout, mode: str, norm_len: int | None,
                      pad_id: int, seed: int) -> list[list[TrainBatch]]:
    """Shuffle rows (seeded), cut into mini-batches, set loss weights per mini-batch, pad, and split each
    mini-batch over ranks: result[m][k] is rank k's share of mini-batch m (micro_per_rank * micro rows)."""
    order = torch.randperm(batch.num_rows, generator=torch.Generator().manual_seed(seed))
    per_mini = math.ceil(batch.num_rows / layout.mini_batches)
    out: list[list[TrainBatch]] = []
    for m in range(layout.mini_batches):
        mb = select_rows(batch, order[m * per_mini : (m + 1) * per_mini])
        mb = replace(mb, loss_weights_B_T=aggregation_weights(mb.loss_mask_B_T, mode, norm_len))
        mb = pad_rows(mb, layout.rows_per_mini_batch, pad_id)
        share = layout.micro * layout.micro_per_rank
        out.append([select_rows(mb, torch.arange(k * share, (k + 1) * share)) for k in range(layout.ranks)])
    return out


# ---------------------------------------------------------------------------------------------- DPO pair rows
def pair_rows(pairs: Sequence[PreferencePair], pad_id: int) -> TrainBatch:
    """Interleaved rows: 2i = chosen, 2i+1 = rejected of pair i (positive_B marks the chosen rows)."""
    flat = [ScoredRollout(ro, reward=float(i == 0), correct=i == 0) for p in pairs for i, ro in
            enumerate((p.chosen, p.rejected))]
    return token_rows(flat, torch.zeros(len(flat)), pad_id)


def pair_layout(pairs_per_round: int, cfg: LearnerConfig) -> LearnerLayout:
    """Like learner_layout, in whole pairs: every micro-batch holds an even number of rows."""
    per_mini = math.ceil(pairs_per_round / cfg.mini_batches)
    per_rank = math.ceil(per_mini / cfg.num_ranks)
    micro_pairs = max(1, min(cfg.micro_batch_size // 2, per_rank))
    return LearnerLayout(cfg.num_ranks, cfg.mini_batches, 2 * micro_pairs, math.ceil(per_rank / micro_pairs))


def plan_pair_batches(batch: TrainBatch, layout: LearnerLayout, pad_id: int, seed: int
                      ) -> tuple[list[list[TrainBatch]], list[int]]:
    """Shuffle pairs, cut into mini-batches, pad with empty pairs, split over ranks. Returns the shares
    (result[m][k]) and the number of real pairs in each mini-batch (the loss normaliser)."""
    n_pairs = batch.num_rows // 2
    order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
    per_mini = math.ceil(n_pairs / layout.mini_batches)
    shares, counts = [], []
    for m in range(layout.mini_batches):
        idx = order[m * per_mini:(m + 1) * per_mini]
        counts.append(len(idx))
        rows = torch.stack([2 * idx, 2 * idx + 1], dim=1).flatten()
        mb = pad_rows(select_rows(batch, rows), layout.rows_per_mini_batch, pad_id)
        share = layout.micro * layout.micro_per_rank
        shares.append([select_rows(mb, torch.arange(k * share, (k + 1) * share)) for k in range(layout.ranks)])
    return shares, counts
