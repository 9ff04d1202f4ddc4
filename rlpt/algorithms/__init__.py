"""Algorithm modules, one file each (pure tensor functions). Selection is this explicit dict, keyed by the
config's algorithm name; adding an algorithm = one file + one entry here (DESIGN.md §2)."""

from __future__ import annotations

from types import ModuleType

from rlpt.algorithms import grpo

ALGORITHMS: dict[str, ModuleType] = {
    "grpo": grpo,
}

__all__ = ["ALGORITHMS"]
