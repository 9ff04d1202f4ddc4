"""The rollout-fleet autoscaling policy: a pure function of what the last steps measured (no Ray here).

Signal: the share of wall time the loop spent waiting on rollouts (`rollout_s / step_s`, measured by the
rollout pool between two membership points). A synchronous loop that mostly waits on generation is
rollout-bound: one more engine shortens every step. One that barely waits has engines to spare.

Rule (hysteresis + cool-down, so one noisy step does not flap the fleet):
- share > target + band and size < max  -> one more engine
- share < target - band and size > min  -> one fewer
- otherwise, or within `cooldown_steps` of the last change: keep.

>>> p = FleetPolicy(min_size=1, max_size=4, target_share=0.5, band=0.1, cooldown_steps=2)
>>> p.decide(step=0, wait_share=0.9, size=1, last_change_step=None)
Decision(target=2, reason='rollout-bound: waiting 90% of the step > 60%')
>>> p.decide(step=1, wait_share=0.9, size=2, last_change_step=0).reason
'cool-down: last change at step 0'
>>> p.decide(step=5, wait_share=0.2, size=2, last_change_step=0)
Decision(target=1, reason='idle: waiting 20% of the step < 40%')
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    target: int
    reason: str


@dataclass(frozen=True)
class FleetPolicy:
    min_size: int
    max_size: int
    target_share: float
    band: float
    cooldown_steps: int

    def decide(self, step: int, wait_share: float, size: int, last_change_step: int | None) -> Decision:
        """The wanted fleet size, given the current size (live engines plus the ones already asked for)."""
        clamped = min(max(size, self.min_size), self.max_size)
        if clamped != size:
            return Decision(clamped, f"out of bounds [{self.min_size}, {self.max_size}]")
        if last_change_step is not None and step - last_change_step < self.cooldown_steps:
            return Decision(size, f"cool-down: last change at step {last_change_step}")
        hi, lo = self.target_share + self.band, self.target_share - self.band
        if wait_share > hi and size < self.max_size:
            return Decision(size + 1, f"rollout-bound: waiting {wait_share:.0%} of the step > {hi:.0%}")
        if wait_share < lo and size > self.min_size:
            return Decision(size - 1, f"idle: waiting {wait_share:.0%} of the step < {lo:.0%}")
        return Decision(size, f"steady: waiting {wait_share:.0%} of the step")
