"""RFT loops. `online` is the shared online loop (keep verified-correct samples, SFT on them every step).
`rounds` (DART-style): per round, sample each prompt until it has its quota of correct answers or its trial budget
is spent (quotas `uniform` or `prop2diff` from the first pass's fail rates), write the round's SFT set as parquet
(reusable as plain SFT data), fine-tune E epochs on it (from the last policy, or from the base model), then sync.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Protocol, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rlpt.algorithms.rft import dedup_correct, quotas
from rlpt.batching import token_rows
from rlpt.config import RlptConfig
from rlpt.data import PromptCursor
from rlpt.loops import online
from rlpt.loops.common import (LearnerService, LoopState, StepCallback, Workers, end_step, rollout_metrics,
                               set_rng_state)
from rlpt.loops.online import sampling_spec
from rlpt.metrics import MetricsWriter, PhaseTimer
from rlpt.types import Prompt, ScoredRollout, request_seed


class ResettableLearner(LearnerService, Protocol):
    def reset_to_base(self) -> None: ...


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


def sample_to_quota(cfg: RlptConfig, w: Workers, prompts: Sequence[Prompt], rnd: int, timer: PhaseTimer
                    ) -> tuple[list[ScoredRollout], list[ScoredRollout], list[ScoredRollout]]:
    """Returns (SFT set, every scored sample, the first pass's samples)."""
    c, G = cfg.algorithm.rft, cfg.rollout.samples_per_prompt
    got: dict[str, list[ScoredRollout]] = {p.uid: [] for p in prompts}
    quota: dict[str, int] = {}
    seen: list[ScoredRollout] = []
    first: list[ScoredRollout] = []
    active, attempt = list(prompts), 0
    while active and attempt * G < c.max_trials:
        seeds = [request_seed(cfg.run.seed, rnd * 1000 + attempt, j, G) for j in range(len(active))]
        with timer.phase("rollout"):
            rollouts = w.rollout.generate(active, seeds, sampling_spec(cfg))
        with timer.phase("verify"):
            scored = w.verifier.score(rollouts)
        seen += scored
        for s in scored:
            got[s.rollout.prompt.uid].append(s)
        if attempt == 0:
            first = scored
            fail = [1.0 - sum(1 for s in got[p.uid] if s.correct) / G for p in prompts]
            quota = dict(zip([p.uid for p in prompts], quotas(fail, c.k_correct, c.quota)))
        attempt += 1
        active = [p for p in active if len(dedup_correct(got[p.uid])) < quota[p.uid]]
    sft = [s for p in prompts for s in dedup_correct(got[p.uid])[: quota[p.uid]]]
    return sft, seen, first


def run(cfg: RlptConfig, w: Workers, prompts: Sequence[Prompt], run_dir: Path, pad_id: int,
        on_step: StepCallback | None = None, resume: LoopState | None = None) -> None:
    c = cfg.algorithm.rft
    if c.mode == "online":
        return online.run(cfg, w, prompts, run_dir, pad_id, on_step, resume)
    learner: ResettableLearner = w.learner  # type: ignore[assignment]
    cursor = PromptCursor(len(prompts), cfg.run.seed, cfg.data.shuffle)
    rng = random.Random(cfg.run.seed)
    chunk = cfg.rollout.prompts_per_step * cfg.rollout.samples_per_prompt  # rows per learner step
    start, version = 0, 0
    if resume is not None:  # sampling seeds derive from (seed, round, attempt, position); the shuffle RNG is restored
        set_rng_state(rng, resume.rng)
        cursor.load_state_dict(resume.cursor)
        start, version = resume.next_step, resume.policy_version
    timer = PhaseTimer()
    with MetricsWriter(run_dir, tensorboard=cfg.run.tensorboard) as writer:
        for rnd in range(start, c.rounds):
            timer.reset()
            t0 = time.perf_counter()
            batch_prompts = [prompts[i] for i in cursor.take(c.prompts_per_round)]
            sft, seen, first = sample_to_quota(cfg, w, batch_prompts, rnd, timer)
            metrics = rollout_metrics(first, version)  # reward of the current policy: the first pass
            met = len({s.rollout.prompt.uid for s in sft})
            metrics.update({"rft/kept": float(len(sft)), "rft/prompts_with_data": float(met),
                            "rft/samples": float(len(seen))})
            write_sft_set(run_dir, rnd, sft)
            if sft:
                if c.restart == "base":
                    with timer.phase("reset"):
                        learner.reset_to_base()
                with timer.phase("train"):
                    for epoch in range(c.epochs):
                        order = list(sft)
                        rng.shuffle(order)
                        for i in range(0, len(order), chunk):
                            part = order[i:i + chunk]
                            step_id = (rnd * c.epochs + epoch) * 10_000 + i
                            metrics.update(w.learner.train_step(token_rows(part, torch.zeros(len(part)), pad_id),
                                                                step_id))
                with timer.phase("sync"):
                    report = w.sync.sync(version + 1)
                version = report.version
                metrics.update(report.as_metrics())
            end_step(cfg, w, run_dir, rnd, c.rounds, version, bool(sft), metrics, seen, timer, t0,
                     writer, on_step, cursor.state_dict(), rng)
    return None
