"""The quota-rounds loop (`LoopKind.QUOTA_ROUNDS`; RFT `mode: rounds`, DART-style): per round, sample each prompt
until it has its quota of kept samples or its trial budget is spent (the algorithm's `quota` hooks: quotas from
the first pass's fail rates, which samples to keep), write the round's SFT set as parquet (reusable as plain SFT
data), fine-tune E epochs on it (from the last policy, or from the base model), then sync. Online RFT runs in the
online loop.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlpt.algorithms import algorithm_of
from rlpt.algorithms.base import QuotaHooks
from rlpt.batching import token_rows
from rlpt.config import RlptConfig
from rlpt.data import PromptCursor
from rlpt.loops.common import (LoopRun, LoopState, ResettableLearner, StepCallback, StepEnd, Workers, end_step,
                               rollout_metrics, set_rng_state)
from rlpt.loops.online import sampling_spec
from rlpt.metrics import MetricsWriter, PhaseTimer
from rlpt.types import Prompt, ScoredRollout, request_seed


def write_sft_set(run_dir: Path, rnd: int, rows: Sequence[ScoredRollout]) -> Path:
    out = run_dir / "sft" / f"round_{rnd:06d}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [{"prompt": s.rollout.prompt.text, "completion": s.rollout.text, "answer": s.rollout.prompt.answer,
          "prompt_uid": s.rollout.prompt.uid, "policy_version": s.rollout.policy_version} for s in rows],
        schema=pa.schema([("prompt", pa.string()), ("completion", pa.string()), ("answer", pa.string()),
                          ("prompt_uid", pa.string()), ("policy_version", pa.int64())]))
    tmp = out.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out


def sample_to_quota(cfg: RlptConfig, hooks: QuotaHooks, w: Workers[Any], prompts: Sequence[Prompt], rnd: int,
                    timer: PhaseTimer) -> tuple[list[ScoredRollout], list[ScoredRollout], list[ScoredRollout]]:
    """Returns (SFT set, every scored sample, the first pass's samples)."""
    G = hooks.spec.samples_per_prompt
    got: dict[str, list[ScoredRollout]] = {p.uid: [] for p in prompts}
    quota: dict[str, int] = {}
    seen: list[ScoredRollout] = []
    first: list[ScoredRollout] = []
    active, attempt = list(prompts), 0
    while active and attempt * G < hooks.max_trials:
        seeds = [request_seed(cfg.run.seed, rnd * 1000 + attempt, j, G) for j in range(len(active))]
        with timer.phase("rollout"):
            rollouts = w.rollout.generate(active, seeds, sampling_spec(cfg))
        with timer.phase("verify"):
            scored = w.rewarder.score(rollouts)
        seen += scored
        for s in scored:
            got[s.rollout.prompt.uid].append(s)
        if attempt == 0:
            first = scored
            fail = [1.0 - sum(1 for s in got[p.uid] if s.correct) / G for p in prompts]
            quota = dict(zip([p.uid for p in prompts], hooks.quotas(fail)))
        attempt += 1
        active = [p for p in active if len(hooks.keep(got[p.uid])) < quota[p.uid]]
    sft = [s for p in prompts for s in hooks.keep(got[p.uid])[: quota[p.uid]]]
    return sft, seen, first


def split_evenly(rows: Sequence[ScoredRollout], parts: int) -> list[tuple[int, list[ScoredRollout]]]:
    """(start offset, rows) of `parts` contiguous pieces whose sizes differ by at most one (fewer pieces when there
    are fewer rows): the round's set trains in a fixed number of learner steps, known to the LR schedule."""
    parts = min(parts, len(rows))
    size, extra = divmod(len(rows), parts) if parts else (0, 0)
    out, start = [], 0
    for k in range(parts):
        n = size + (1 if k < extra else 0)
        out.append((start, list(rows[start:start + n])))
        start += n
    return out


def train_round(hooks: QuotaHooks, w: Workers[ResettableLearner], sft: Sequence[ScoredRollout], rnd: int,
                rng: random.Random, pad_id: int, timer: PhaseTimer) -> dict[str, float]:
    """Fine-tune `epochs` passes over the round's set (shuffled each epoch), `updates_per_epoch` learner steps each."""
    metrics: dict[str, float] = {}
    if hooks.restart_from_base:
        with timer.phase("reset"):
            w.learner.reset_to_base()
    with timer.phase("train"):
        for epoch in range(hooks.spec.epochs):
            order = list(sft)
            rng.shuffle(order)
            for i, part in split_evenly(order, hooks.updates_per_epoch):
                step_id = (rnd * hooks.spec.epochs + epoch) * 10_000 + i
                metrics.update(w.learner.train_step(token_rows(part, torch.zeros(len(part)), pad_id), step_id))
    return metrics


def run(cfg: RlptConfig, w: Workers[ResettableLearner], prompts: Sequence[Prompt], run_dir: Path, pad_id: int,
        on_step: StepCallback | None = None, resume: LoopState | None = None) -> None:
    algo = algorithm_of(cfg)
    if algo.quota is None:
        raise ValueError(f"algorithm {algo.name!r} has no quota-rounds hooks (Algorithm.quota)")
    hooks = algo.quota(cfg)
    cursor = PromptCursor(len(prompts), cfg.run.seed, cfg.data.shuffle)
    rng = random.Random(cfg.run.seed)
    start, version = 0, 0
    if resume is not None:  # sampling seeds derive from (seed, round, attempt, position); the shuffle RNG is restored
        set_rng_state(rng, resume.rng)
        cursor.load_state_dict(resume.cursor)
        start, version = resume.next_step, resume.policy_version
    timer = PhaseTimer()
    rounds = hooks.spec.rounds
    with MetricsWriter(run_dir, tensorboard=cfg.run.tensorboard) as writer:
        loop = LoopRun(cfg, w, run_dir, rounds, writer, timer, on_step)
        for rnd in range(start, rounds):
            timer.reset()
            t0 = time.perf_counter()
            batch_prompts = [prompts[i] for i in cursor.take(hooks.spec.prompts_per_round)]
            sft, seen, first = sample_to_quota(cfg, hooks, w, batch_prompts, rnd, timer)
            metrics = rollout_metrics(first, version)  # reward of the current policy: the first pass
            met = len({s.rollout.prompt.uid for s in sft})
            metrics.update({"rft/kept": float(len(sft)), "rft/prompts_with_data": float(met),
                            "rft/samples": float(len(seen))})
            write_sft_set(run_dir, rnd, sft)
            if sft:
                metrics.update(train_round(hooks, w, sft, rnd, rng, pad_id, timer))
                with timer.phase("sync"):
                    report = w.sync.sync(version + 1)
                version = report.version
                metrics.update(report.as_metrics())
            end_step(loop, StepEnd(rnd, version, bool(sft), metrics, seen, t0, cursor.state_dict(), rng))
