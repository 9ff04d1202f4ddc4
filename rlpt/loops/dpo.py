"""The pair-rounds loop (`LoopKind.PAIR_ROUNDS`; iterative DPO) as a Ray-resident loop: per round, sample K
completions per prompt from the current policy, verify, build (correct, incorrect) pairs (the algorithm's `pairs`
hooks), score them under the reference, train (epochs: the algorithm's plan), then sync the engines (and a
reference that follows the policy) through the weight-sync path. No process restarts and no
model reloads from disk between rounds. One metrics row, one rollouts file and one pairs file per round.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from rlpt.algorithms import algorithm_of
from rlpt.config import RlptConfig
from rlpt.data import PromptCursor
from rlpt.loops.common import LoopRun, LoopState, StepCallback, StepEnd, Workers, end_step, rollout_metrics, set_rng_state
from rlpt.metrics import MetricsWriter, PhaseTimer
from rlpt.types import PreferencePair, Prompt, SamplingSpec, request_seed


def write_pairs(run_dir: Path, rnd: int, pairs: Sequence[PreferencePair]) -> Path:
    out = run_dir / "pairs" / f"round_{rnd:06d}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([
        {"round": rnd, "prompt_uid": p.prompt.uid, "prompt": p.prompt.text, "chosen": p.chosen.text,
         "rejected": p.rejected.text, "policy_version": p.chosen.policy_version} for p in pairs
    ], schema=pa.schema([("round", pa.int64()), ("prompt_uid", pa.string()), ("prompt", pa.string()),
                         ("chosen", pa.string()), ("rejected", pa.string()), ("policy_version", pa.int64())]))
    tmp = out.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out


def run(cfg: RlptConfig, w: Workers[Any], prompts: Sequence[Prompt], run_dir: Path, pad_id: int,
        on_step: StepCallback | None = None, resume: LoopState | None = None) -> None:
    algo = algorithm_of(cfg)
    if algo.pairs is None:
        raise ValueError(f"algorithm {algo.name!r} has no pair-rounds hooks (Algorithm.pairs)")
    if w.reference is None:
        raise ValueError(f"algorithm {algo.name!r} trains against a reference, but the graph has none")
    hooks, r = algo.pairs(cfg), cfg.rollout
    spec = SamplingSpec(n=hooks.spec.samples_per_prompt, max_tokens=r.max_new_tokens, temperature=r.temperature,
                        top_p=r.top_p, top_k=r.top_k, stop=r.stop)
    cursor = PromptCursor(len(prompts), cfg.run.seed, cfg.data.shuffle)
    rng = random.Random(cfg.run.seed)
    start, version = 0, 0
    if resume is not None:  # sampling seeds derive from (seed, round, position); the pairing RNG is restored
        set_rng_state(rng, resume.rng)
        cursor.load_state_dict(resume.cursor)
        start, version = resume.next_step, resume.policy_version
    timer = PhaseTimer()
    rounds, G = hooks.spec.rounds, hooks.spec.samples_per_prompt
    with MetricsWriter(run_dir, tensorboard=cfg.run.tensorboard) as writer:
        loop = LoopRun(cfg, w, run_dir, rounds, writer, timer, on_step)
        for rnd in range(start, rounds):
            timer.reset()
            t0 = time.perf_counter()
            batch_prompts = [prompts[i] for i in cursor.take(hooks.spec.prompts_per_round)]
            seeds = [request_seed(cfg.run.seed, rnd, j, G) for j in range(len(batch_prompts))]
            with timer.phase("rollout"):
                rollouts = w.rollout.generate(batch_prompts, seeds, spec)
            with timer.phase("verify"):
                scored = w.rewarder.score(rollouts)
            pairs, skipped = hooks.make_pairs(scored, rng)
            metrics = rollout_metrics(scored, version)
            metrics.update({"dpo/pairs": float(len(pairs)), "dpo/skipped_prompts": float(skipped)})
            write_pairs(run_dir, rnd, pairs)
            if pairs:
                batch = hooks.build_batch(pairs, pad_id)
                with timer.phase("reference"):
                    batch = replace(batch, ref_logprobs_B_T=w.reference.logprobs(batch.input_ids_B_T,
                                                                                 batch.attention_mask_B_T))
                with timer.phase("train"):
                    metrics.update(w.learner.train_step(batch, rnd))
                with timer.phase("sync"):
                    report = w.sync.sync(version + 1)
                version = report.version
                metrics.update(report.as_metrics())
            end_step(loop, StepEnd(rnd, version, bool(pairs), metrics, scored, t0, cursor.state_dict(), rng))
