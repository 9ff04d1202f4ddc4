"""Evaluation during training (`run.eval_every`): after the sync of every N-th step, the rollout engines complete
the evaluation set at fixed sampling, the verifiers score it, and `eval/*` (rlpt.eval_stats) joins that step's
metrics row (timed as `timing/eval`).

It changes nothing the training depends on: its sampling seeds come from their own stream (`EVAL_SEED_STREAM`),
it never moves the training prompt cursor, and its engine time is not counted as rollout time (the autoscaler's
signal and `timing/rollout_engine` stay those of training). A run with evaluation trains exactly like one without
(with `eval.path`; `eval.holdout` removes its prompts from the training data) and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rlpt.config import RlptConfig
from rlpt.eval_stats import eval_metrics
from rlpt.loops.common import Workers
from rlpt.types import Prompt, SamplingSpec, request_seed

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
        greedy = w.verifier.score(w.rollout.generate(self.prompts, seeds, greedy_spec, account=False))
        sampled = [] if sampled_spec is None else w.verifier.score(
            w.rollout.generate(self.prompts, seeds, sampled_spec, account=False))
        return eval_metrics(greedy, sampled, n, self.cfg.eval.pass_k)
