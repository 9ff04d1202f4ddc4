"""The asynchronous online loop (rollout.max_staleness = K >= 1): the rollout engines generate and the verifiers
score the steps ahead (rlpt.loops.producer, a driver thread) while the learner trains, so a step costs about
max(generation + the engines' weight load, training + the learner's side of the sync) instead of their sum: the
sync is a hand-off (EngineSync.hand_off), the learner does not wait for the engines to load the new weights. Same
algorithms, hooks, metrics and files as the synchronous loop (rlpt/loops/online.py, which K = 0 runs unchanged).

The bound is strict and checked where samples are consumed: a group is trained on at learner version u only if
u - v <= K for the oldest policy version v among its samples. In `wait` mode admission makes a violation
impossible (one would be a bug, and raises); in `drop` mode such groups are dropped (`async/dropped_groups`) and
regenerated from the current weights before the step trains. The learner corrects for the staleness by default
(learner.off_policy: decoupled PPO with truncated importance weights; `off_policy/*` metrics every step).

A checkpoint holds the finished untrained steps with their versions (rlpt.loops.in_flight), so a resumed run
trains on exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from rlpt.algorithms.off_policy import within_bound
from rlpt.config import RlptConfig
from rlpt.data import PromptCursor
from rlpt.loops import in_flight
from rlpt.loops.common import LoopRun, LoopState, StepCallback, StepEnd, Workers, end_step, rollout_metrics
from rlpt.loops.evaluation import Evaluation
from rlpt.loops.online import online_algorithm, train_batch, with_reference
from rlpt.loops.producer import Producer
from rlpt.metrics import MetricsWriter, PhaseTimer
from rlpt.types import Prompt, ScoredRollout


def split_stale(kept: Sequence[ScoredRollout], group: int, learner_version: int, max_staleness: int
                ) -> tuple[list[ScoredRollout], int]:
    """(the groups within the bound, how many groups were past it); a group's age is its oldest sample's."""
    groups = [list(kept[i:i + group]) for i in range(0, len(kept), group)]
    if not groups:
        return [], 0
    oldest_B = torch.tensor([min(s.rollout.policy_version for s in g) for g in groups])
    ok = within_bound(learner_version, oldest_B, max_staleness).tolist()
    return [s for g, keep in zip(groups, ok) if keep for s in g], ok.count(False)


def run(cfg: RlptConfig, w: Workers[Any], prompts: Sequence[Prompt], run_dir: Path, pad_id: int,
        on_step: StepCallback | None = None, resume: LoopState | None = None,
        eval_prompts: Sequence[Prompt] = ()) -> None:
    algo, hooks = online_algorithm(cfg)
    K, G, P = cfg.rollout.max_staleness, cfg.rollout.samples_per_prompt, cfg.rollout.prompts_per_step
    cursor = PromptCursor(len(prompts), cfg.run.seed, cfg.data.shuffle)
    start_step, version, pending = 0, 0, []
    if resume is not None:
        cursor.load_state_dict(resume.cursor)
        start_step, version = resume.next_step, resume.policy_version
        pending = [in_flight.from_json(d, prompts) for d in resume.in_flight]
    timer = PhaseTimer()
    evaluation = Evaluation(cfg, eval_prompts)
    producer = Producer(cfg, hooks, w, prompts, cursor, start_step, pending, pad_id).start()
    try:
        with MetricsWriter(run_dir, tensorboard=cfg.run.tensorboard) as writer:
            loop = LoopRun(cfg, producer.workers, run_dir, cfg.run.steps, writer, timer, on_step)
            for step in range(start_step, cfg.run.steps):
                timer.reset()
                t0 = time.perf_counter()
                with timer.phase("wait"):  # the learner idles: the producer has not finished this step
                    samples = producer.take(step)
                timer.add(samples.timing)
                kept, dropped = split_stale(samples.kept, G, version, K)
                seen, attempt = list(samples.seen), 1 + hooks.resample_tries
                while dropped and cfg.rollout.stale == "drop" and len(kept) < P * G and attempt < 64:
                    more, more_seen = producer.refill(step, P - len(kept) // G, attempt, timer)
                    kept, seen, attempt = kept + more, seen + more_seen, attempt + 1 + hooks.resample_tries
                if dropped and cfg.rollout.stale == "wait":
                    raise RuntimeError(f"step {step}: {dropped} groups are past rollout.max_staleness={K} in wait "
                                       f"mode (admission should have prevented it: a bug)")
                learner_version = version
                metrics = rollout_metrics(seen, version)
                metrics["dynamic/kept_frac"] = len(kept) / max(len(seen), 1)
                metrics["async/dropped_groups"] = float(dropped)
                if samples.built and not dropped:
                    batch = samples.batch
                else:  # read back from a checkpoint, or refilled: build it here
                    batch = hooks.build_batch(kept, pad_id)
                    batch = None if batch is None else with_reference(w, batch, timer)
                if batch is not None:
                    metrics.update(train_batch(algo, w, batch, step, timer))
                    with timer.phase("wait"):
                        producer.before_sync(step)
                    with timer.phase("sync"), producer.engines:  # the engines load it before their next round
                        report = w.sync.hand_off(version + 1)
                    version = report.version
                    metrics.update(report.as_metrics())
                producer.trained(step)
                if evaluation.due(step):  # after the sync: the engines hold the weights this step produced
                    with timer.phase("eval"), producer.engines:
                        metrics.update(evaluation.run(producer.workers, step))

                def checkpoint_state(step: int = step) -> tuple[dict[str, Any], list[dict[str, Any]]]:
                    cur, done = producer.in_flight(step)
                    return cur, [in_flight.to_json(s) for s in done]
                end_step(loop, StepEnd(step, version, batch is not None, metrics, seen, t0, samples.cursor,
                                       learner_version=learner_version,
                                       trained_samples=kept if batch is not None else (), in_flight=checkpoint_state))
            w.sync.settle()  # the last hand-off's loads: the engines end on the final weights, or the run says why
    finally:
        producer.stop()
