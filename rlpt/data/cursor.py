"""A deterministic, seedable, resumable cursor over a prompt list.

Epoch e visits every item once in the order `permutation(seed, e)` (or 0..n-1 without shuffling). A batch that
crosses an epoch boundary takes the rest of epoch e and continues in epoch e+1: nothing is skipped or replayed.
The whole state is a small dict, saved in checkpoints and checked on load (a changed dataset is an error, not a
silent replay).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class PromptCursor:
    def __init__(self, num_items: int, seed: int, shuffle: bool = True) -> None:
        if num_items <= 0:
            raise ValueError("cannot iterate over an empty dataset")
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.epoch, self.pos = 0, 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def take(self, k: int) -> list[int]:
        """The next `k` item indices, crossing epoch boundaries as needed."""
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.num_items:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._order_for(self.epoch)
            n = min(k - len(out), self.num_items - self.pos)
            out.extend(int(i) for i in self._order[self.pos : self.pos + n])
            self.pos += n
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "num_items": self.num_items,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_items", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"data cursor mismatch on '{key}': checkpoint has {state[key]!r}, current data has "
                    f"{getattr(self, key)!r} (did the dataset or run.seed change?)"
                )
        if not (0 <= state["pos"] <= self.num_items and state["epoch"] >= 0):
            raise ValueError(f"corrupt data cursor state: {state}")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._order_for(self.epoch)
