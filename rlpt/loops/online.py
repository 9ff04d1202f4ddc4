"""The synchronous online RL loop of every algorithm whose `Algorithm.loop` is ONLINE (GRPO with its DAPO / Dr.
GRPO options, NFT, online RFT, ...): prompts -> rollout -> verify -> (reference) -> batch -> learner -> sync, every
phase timed, one metrics row and one rollouts file per step; every `run.eval_every` steps an evaluation
(rlpt.loops.evaluation) after the sync. The algorithm's `online` hooks decide which groups to
keep and how to build the batch, its plan and loss what the learner does; the control flow is the same.

Dynamic sampling: groups the algorithm cannot learn from (GRPO with dynamic_sampling: all-equal rewards; NFT:
r_hat in {0, 1}; RFT: no correct sample) are dropped and the batch is refilled from new prompts, at most
`resample_tries` extra rounds; the kept fraction is logged.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from rlpt.algorithms import algorithm_of
from rlpt.algorithms.base import Algorithm, OnlineHooks
from rlpt.config import RlptConfig
from rlpt.data import PromptCursor
from rlpt.loops.common import LoopRun, LoopState, StepCallback, StepEnd, Workers, end_step, rollout_metrics
from rlpt.loops.evaluation import Evaluation
from rlpt.loops.multi_turn import multi_turn_sampler
from rlpt.metrics import MetricsWriter, PhaseTimer
from rlpt.types import Prompt, SamplingSpec, ScoredRollout, TrainBatch, request_seed


def sampling_spec(cfg: RlptConfig) -> SamplingSpec:
    r = cfg.rollout
    return SamplingSpec(n=r.samples_per_prompt, max_tokens=r.max_new_tokens, temperature=r.temperature,
                        top_p=r.top_p, top_k=r.top_k, stop=r.stop)


Sampler = Callable[[Sequence[Prompt], Sequence[int]], list[ScoredRollout]]  # (prompts, seeds) -> scored samples


def timed_sampler(cfg: RlptConfig, w: Workers[Any], timer: PhaseTimer) -> Sampler:
    """Generate, then score, each timed as its phase (the synchronous loop's sampling); multi-turn when the run
    has an environment (rlpt.loops.multi_turn)."""
    if w.multi_turn is not None:
        return multi_turn_sampler(cfg, w.rollout.generate, w.multi_turn, w.rewarder, timer)
    spec = sampling_spec(cfg)

    def sample(batch: Sequence[Prompt], seeds: Sequence[int]) -> list[ScoredRollout]:
        with timer.phase("rollout"):
            rollouts = w.rollout.generate(batch, seeds, spec)
        with timer.phase("verify"):
            return w.rewarder.score(rollouts)
    return sample


def attempt_seeds(cfg: RlptConfig, step: int, attempt: int, n: int) -> list[int]:
    """The request seeds of the n prompts of one sampling attempt of a step."""
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
    return [request_seed(cfg.run.seed, step, attempt * P + j, G) for j in range(n)]


def collect_groups(cfg: RlptConfig, hooks: OnlineHooks, sample: Sampler, prompts: Sequence[Prompt],
                   take: Callable[[int], list[int]], step: int, want: int | None = None, first_attempt: int = 0
                   ) -> tuple[list[ScoredRollout], list[ScoredRollout], int]:
    """Sample and score until `want` (default `prompts_per_step`) groups are kept, taking prompts with `take`
    (the cursor's). Returns (kept, every scored rollout, #groups). Request seeds derive from (step, attempt,
    position); a refill of the same step starts at `first_attempt` so its seeds are new."""
    P, G = cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt
    want = P if want is None else want
    kept: list[ScoredRollout] = []
    seen: list[ScoredRollout] = []
    for attempt in range(first_attempt, first_attempt + 1 + hooks.resample_tries):
        need = want - len(kept) // G
        batch = [prompts[i] for i in take(need)]
        seeds = attempt_seeds(cfg, step, attempt, len(batch))
        scored = sample(batch, seeds)
        seen += scored
        keep = hooks.keep_groups(scored)
        kept += [s for p in range(need) if keep[p] for s in scored[p * G:(p + 1) * G]]
        if len(kept) // G >= want:
            break
    return kept, seen, len(seen) // G


def online_algorithm(cfg: RlptConfig) -> tuple[Algorithm, OnlineHooks]:
    algo = algorithm_of(cfg)
    if algo.online is None:
        raise ValueError(f"algorithm {algo.name!r} has no online-loop hooks (Algorithm.online)")
    return algo, algo.online(cfg)


def with_reference(w: Workers[Any], batch: TrainBatch, timer: PhaseTimer) -> TrainBatch:
    """The batch with the reference model's logprobs, when the run has a reference."""
    if w.reference is None:
        return batch
    with timer.phase("reference"):
        ref = w.reference.logprobs(batch.input_ids_B_T, batch.attention_mask_B_T)
    return replace(batch, ref_logprobs_B_T=ref)


def train_batch(algo: Algorithm, w: Workers[Any], batch: TrainBatch, step: int, timer: PhaseTimer
                ) -> dict[str, float]:
    """One learner step on the batch: the algorithm's batch metrics and the learner's."""
    metrics = algo.batch_metrics(batch)
    with timer.phase("train"):
        metrics.update(w.learner.train_step(batch, step))
    return metrics


def run(cfg: RlptConfig, w: Workers[Any], prompts: Sequence[Prompt], run_dir: Path, pad_id: int,
        on_step: StepCallback | None = None, resume: LoopState | None = None,
        eval_prompts: Sequence[Prompt] = ()) -> None:
    algo, hooks = online_algorithm(cfg)
    cursor = PromptCursor(len(prompts), cfg.run.seed, cfg.data.shuffle)
    start_step, version = 0, 0
    if resume is not None:  # sampling seeds derive from (seed, step, position): nothing else to restore here
        cursor.load_state_dict(resume.cursor)
        start_step, version = resume.next_step, resume.policy_version
    timer = PhaseTimer()
    evaluation = Evaluation(cfg, eval_prompts)
    with MetricsWriter(run_dir, tensorboard=cfg.run.tensorboard) as writer:
        loop = LoopRun(cfg, w, run_dir, cfg.run.steps, writer, timer, on_step)
        for step in range(start_step, cfg.run.steps):
            timer.reset()
            t0 = time.perf_counter()
            kept, seen, generated_groups = collect_groups(cfg, hooks, timed_sampler(cfg, w, timer), prompts,
                                                          cursor.take, step)
            learner_version = version
            metrics = rollout_metrics(seen, version)
            metrics["dynamic/kept_frac"] = len(kept) / max(len(seen), 1)
            batch = hooks.build_batch(kept, pad_id)
            if batch is not None:
                metrics.update(train_batch(algo, w, with_reference(w, batch, timer), step, timer))
                with timer.phase("sync"):
                    report = w.sync.sync(version + 1)
                version = report.version
                metrics.update(report.as_metrics())
            if evaluation.due(step):  # after the sync: the engines hold the weights this step produced
                with timer.phase("eval"):
                    metrics.update(evaluation.run(w, step))
            end_step(loop, StepEnd(step, version, batch is not None, metrics, seen, t0, cursor.state_dict(),
                                   learner_version=learner_version, trained_samples=kept if batch is not None else ()))
