"""Evaluation during training (`run.eval_every`): after the sync of every N-th step, the rollout engines complete
the evaluation set at fixed sampling, the verifiers score it, and `eval/*` (rlpt.eval_stats) joins that step's
metrics row (timed as `timing/eval`).

A multi-turn run (`environment.name`) evaluates whole trajectories: the same environment, the verifier in place of
reward terms when environment.reward is terms, a trajectory's verdict its accuracy.

It changes nothing the training depends on: its sampling seeds come from their own stream (`EVAL_SEED_STREAM`),
it never moves the training prompt cursor, and its engine time is not counted as rollout time (the autoscaler's
signal and `timing/rollout_engine` stay those of training). A run with evaluation trains exactly like one without
(with `eval.path`; `eval.holdout` removes its prompts from the training data) and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rlpt.config import RlptConfig
from rlpt.eval_stats import eval_metrics
from rlpt.loops.common import Workers
from rlpt.loops.multi_turn import multi_turn_sampler
from rlpt.metrics import PhaseTimer
from rlpt.types import Prompt, Rollout, SamplingSpec, ScoredRollout, request_seed

EVAL_SEED_STREAM = 7_919_000_001  # added to run.seed: evaluation requests never share a training request's seed


def eval_specs(cfg: RlptConfig) -> tuple[SamplingSpec, SamplingSpec | None]:
    """(greedy, sampled) sampling of the evaluation; sampled is None with eval.samples = 0."""
    r, e = cfg.rollout, cfg.eval
    greedy = SamplingSpec(n=1, max_tokens=r.max_new_tokens, temperature=0.0, stop=r.stop)
    sampled = None if not e.samples else SamplingSpec(
        n=e.samples, max_tokens=r.max_new_tokens, temperature=e.temperature or r.temperature, top_p=r.top_p,
        top_k=r.top_k, stop=r.stop)
    return greedy, sampled


@dataclass(frozen=True)
class Evaluation:
    cfg: RlptConfig
    prompts: Sequence[Prompt]

    def due(self, step: int) -> bool:
        every = self.cfg.run.eval_every
        return bool(every and self.prompts) and (step + 1) % every == 0

    def run(self, w: Workers[Any], step: int) -> dict[str, float]:
        greedy_spec, sampled_spec = eval_specs(self.cfg)
        n = self.cfg.eval.samples
        seeds = [request_seed(self.cfg.run.seed + EVAL_SEED_STREAM, step, i, max(n, 1))
                 for i in range(len(self.prompts))]
        sample = self._sampler(w)
        greedy = sample(greedy_spec, seeds)
        sampled = [] if sampled_spec is None else sample(sampled_spec, seeds)
        return eval_metrics(greedy, sampled, n, self.cfg.eval.pass_k)

    def _sampler(self, w: Workers[Any]) -> Callable[[SamplingSpec, Sequence[int]], list[ScoredRollout]]:
        """Single-turn: the engines complete the prompts, the verifier scores them. Multi-turn: whole trajectories
        (rlpt.loops.multi_turn), scored as training scores them but with the verifier in place of reward terms."""
        def generate(prompts: Sequence[Prompt], seeds: Sequence[int], spec: SamplingSpec) -> list[Rollout]:
            return w.rollout.generate(prompts, seeds, spec, account=False)

        if w.multi_turn is None:
            return lambda spec, seeds: w.verifier.score(generate(self.prompts, seeds, spec))
        mt = w.multi_turn
        return lambda spec, seeds: multi_turn_sampler(self.cfg, generate, mt, w.verifier, PhaseTimer(), spec)(
            self.prompts, seeds)
