"""Prompt data: built-in synthetic tasks, parquet/jsonl files, tokenization, a resumable cursor."""

from __future__ import annotations

from typing import Sequence

from rlpt.config import DataConfig
from rlpt.data.cursor import PromptCursor
from rlpt.data.files import DataError, read_prompts
from rlpt.data.synthetic import arith_prompts, countdown_prompts
from rlpt.data.encode import TokenizedPrompts, tokenize_prompts
from rlpt.types import Prompt

__all__ = ["DataError", "PromptCursor", "TokenizedPrompts", "load_prompts", "tokenize_prompts"]


def load_prompts(cfg: DataConfig, seed: int) -> Sequence[Prompt]:
    """The configured prompts (untokenized): a synthetic task or a file."""
    if cfg.path is not None:
        return read_prompts(cfg.path, cfg.columns, cfg.answer)
    if cfg.task == "arith":
        return arith_prompts(cfg.arith, seed)
    if cfg.task == "countdown":
        return countdown_prompts(cfg.countdown, seed)
    raise AssertionError(f"unhandled data.task {cfg.task!r}")  # the config schema makes this unreachable
