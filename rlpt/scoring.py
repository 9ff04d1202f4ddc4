"""Apply a verifier to a rollout, turning an exception into an explicit error value (never a crash or None).

Timeouts and process isolation are the VerifierPool's job (actors/verifier.py); this is the in-process core.
"""

from __future__ import annotations

from typing import Callable

from rlpt.types import Prompt, Rollout, Score, ScoredRollout

VerifyFn = Callable[[Prompt, str], Score]


def score_rollout(verify: VerifyFn, rollout: Rollout, error_reward: float) -> ScoredRollout:
    try:
        score = verify(rollout.prompt, rollout.text)
    except Exception as e:  # noqa: BLE001 - a verifier bug must become a counted error row, not kill the run
        return ScoredRollout(rollout, reward=error_reward, correct=None, error=f"{type(e).__name__}: {e}")
    if not isinstance(score, Score):
        return ScoredRollout(rollout, reward=error_reward, correct=None,
                             error=f"TypeError: verifier returned {type(score).__name__}, expected Score")
    return ScoredRollout(rollout, reward=float(score.reward), correct=score.correct, info=dict(score.info))
