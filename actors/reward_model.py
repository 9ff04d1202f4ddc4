"""Reward-model actor: one discriminative reward model (rlpt.reward_model) scoring its share of a step's
rollouts in batches. Driven by actors/verifier.ScorePool, which bounds each call (a late actor is killed and
replaced, its rows become timeout errors) and replaces a dead one (its share re-scored)."""

from __future__ import annotations

import threading
from typing import Sequence

from rlpt.config import ModelTerm
from rlpt.isolation import Verdict, VerifyItem


class RewardModelWorker:
    """Ray actor body (wrapped with ray.remote by actors/launch.py)."""

    def __init__(self, name: str, term: ModelTerm, dtype: str = "float32", log_dir: str | None = None) -> None:
        from actors.logs import redirect_output
        from rlpt.reward_model import load_reward_model

        redirect_output(log_dir, name)
        self.name, self.term = name, term
        self.model, self.tokenizer = load_reward_model(term.path, dtype)
        self.lock = threading.Lock()

    def ping(self) -> str:
        return self.name

    def score_items(self, items: Sequence[VerifyItem]) -> list[Verdict]:
        from rlpt.reward_model import score_items

        t = self.term
        with self.lock:
            try:
                return score_items(self.model, self.tokenizer, items, t.batch_size, t.max_len, t.error_reward)
            except Exception as e:  # noqa: BLE001 - e.g. a tokenizer or shape error: error rows, the run goes on
                return [(t.error_reward, None, {}, f"reward_model_error: {type(e).__name__}: {e}")] * len(items)
