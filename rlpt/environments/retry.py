"""`retry`: retry with feedback for the built-in tasks. A wrong answer gets a hint and another turn.

The prompt itself is the first turn (`reset` returns None). Each model turn is scored with the verifier
(`rlpt.verifiers.load_verifier`, default "numeric"):
- correct: done, reward = the verifier's reward;
- wrong with attempts left: not done, reward 0.0, observation = `hint` + the original prompt text. The question is
  repeated because a tiny model trained on "3+4=" -> "7" only knows how to answer a prompt that ends in the question;
- wrong on the last attempt: done, reward 0.0.
info holds {"attempt": n (1-based), "correct": bool, "verifier": the score's info}.

The verifier must give a verdict (`Score.correct` True or False): a graded verifier (correct=None) cannot say when to
retry, so it raises ValueError, which the environment pool records as an error row. Deviation from a plain verifier:
no discount for later attempts; shaping, if wanted, belongs to the reward terms.

>>> from rlpt.types import Prompt
>>> env = RetryWithFeedback()
>>> env.reset(Prompt(uid="a0", text="3+4=", answer="7")) is None
True
>>> first = env.step("8")
>>> first.observation, first.reward, first.done, first.info["attempt"]
('Wrong. Try again: 3+4=', 0.0, False, 1)
>>> env.step("7")
EnvStep(observation=None, reward=1.0, done=True, info={'attempt': 2, 'correct': True, 'verifier': {'pred': 7.0}})
"""

from __future__ import annotations

from rlpt.environments.base import EnvStep
from rlpt.types import Prompt
from rlpt.verifiers import Verifier, load_verifier


class RetryWithFeedback:
    """Up to `max_attempts` answers per trajectory; every wrong one but the last gets `hint` + the question."""

    def __init__(self, verifier: str = "numeric", max_attempts: int = 2, hint: str = "Wrong. Try again: ") -> None:
        if max_attempts < 1:
            raise ValueError(f"retry environment: max_attempts must be >= 1, got {max_attempts}")
        self.verify: Verifier = load_verifier(verifier)
        self.max_attempts = max_attempts
        self.hint = hint
        self._prompt: Prompt | None = None
        self._attempt = 0
        self._done = False

    def reset(self, prompt: Prompt) -> str | None:
        self._prompt, self._attempt, self._done = prompt, 0, False
        return None  # the prompt is the first turn

    def step(self, model_turn: str) -> EnvStep:
        if self._prompt is None or self._done:
            raise RuntimeError("retry environment: step() called before reset() or after the trajectory ended")
        self._attempt += 1
        score = self.verify(self._prompt, model_turn)
        if score.correct is None:
            raise ValueError("retry environment: the verifier returned correct=None; it needs a True/False verdict")
        info = {"attempt": self._attempt, "correct": score.correct, "verifier": dict(score.info)}
        if score.correct:
            self._done = True
            return EnvStep(observation=None, reward=score.reward, done=True, info=info)
        if self._attempt >= self.max_attempts:
            self._done = True
            return EnvStep(observation=None, reward=0.0, done=True, info=info)
        return EnvStep(observation=self.hint + self._prompt.text, reward=0.0, done=False, info=info)
