"""A learner rank's state over time: the learning-rate schedule as a multiplier of `learner.lr` per optimizer step
(a torch LambdaLR function), and the process RNG states a checkpoint saves for exact resume.

The horizon is the number of optimizer steps one schedule spans, `Algorithm.lr_horizon(cfg)`: the steps the run
really takes, so a decaying schedule ends where the run does.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from rlpt.config import LearnerConfig


def lr_multiplier(lc: LearnerConfig, horizon: int, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant, linear to 0 or cosine to 0 at `horizon`.

    >>> from rlpt.config import LearnerConfig
    >>> [round(lr_multiplier(LearnerConfig(lr_schedule="cosine"), 4, s), 3) for s in range(5)]
    [1.0, 0.854, 0.5, 0.146, 0.0]
    >>> [lr_multiplier(LearnerConfig(lr_schedule="linear", warmup_steps=1), 3, s) for s in range(4)]
    [0.5, 1.0, 0.5, 0.0]
    """
    if step < lc.warmup_steps:
        return (step + 1) / (lc.warmup_steps + 1)
    frac = (step - lc.warmup_steps) / max(1, horizon - lc.warmup_steps)
    if lc.lr_schedule == "linear":
        return max(0.0, 1.0 - frac)
    if lc.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return 1.0


def save_process_rng(path: Path) -> None:
    """Python's, NumPy's and torch's global RNG states of this process."""
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, path)


def load_process_rng(path: Path) -> None:
    rng = torch.load(path, weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
