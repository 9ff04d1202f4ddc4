"""Turn prompts into policy input ids: the chat template when the tokenizer has one (per config; a chat prompt's
own turns, with `data.system_prompt` added when it has no system turn), length checks against the prompt budget.

`tokenize_prompts` measures every prompt once (its length decides whether it is kept) and keeps only the
lengths: a kept prompt is tokenized again when the loop draws it, so a dataset of millions of rows costs a few
bytes per row, not its token lists.
"""

from __future__ import annotations

from array import array
from dataclasses import replace
from typing import Any, Sequence

from rlpt.config import DataConfig
from rlpt.data.lazy import LazyPrompts
from rlpt.errors import SetupError
from rlpt.types import Prompt


class PromptTooLongError(SetupError):
    pass


def uses_chat_template(tokenizer: Any, mode: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "always" and not has:
        raise ValueError("data.chat_template is 'always' but the tokenizer has no chat template")
    return has and mode != "never"


def render(tokenizer: Any, prompt: Prompt, cfg: DataConfig) -> tuple[str, bool]:
    """The prompt as text to tokenize, and whether the tokenizer should add its special tokens (BOS): not after a
    chat template, which writes them itself."""
    turns = list(prompt.messages) or [("user", prompt.text)]
    if cfg.system_prompt and turns[0][0] != "system":
        turns.insert(0, ("system", cfg.system_prompt))
    if uses_chat_template(tokenizer, cfg.chat_template):
        messages = [{"role": role, "content": content} for role, content in turns]
        # Render to text, then tokenize: apply_chat_template(tokenize=True) changed return types across versions.
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
    return "\n".join(content for _, content in turns), True


def prompt_ids(tokenizer: Any, prompt: Prompt, cfg: DataConfig) -> list[int]:
    text, special = render(tokenizer, prompt, cfg)
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


class TokenizedPrompts(LazyPrompts):
    """The prompts within the budget, each with its `prompt_ids` (tokenized when accessed)."""

    def __init__(self, base: Sequence[Prompt], tokenizer: Any, cfg: DataConfig, kept: Sequence[int],
                 skipped_too_long: list[str], lengths: Sequence[int]) -> None:
        self.base, self.tokenizer, self.cfg, self.kept = base, tokenizer, cfg, kept
        self.skipped_too_long = skipped_too_long  # uids
        self.lengths = lengths  # tokens of every prompt, kept or not (preflight's length distribution)

    @property
    def prompts(self) -> "TokenizedPrompts":
        return self

    def __len__(self) -> int:
        return len(self.kept)

    def make(self, i: int) -> Prompt:
        p = self.base[self.kept[i]]
        return replace(p, prompt_ids=tuple(prompt_ids(self.tokenizer, p, self.cfg)))


def tokenize_prompts(prompts: Sequence[Prompt], tokenizer: Any, cfg: DataConfig, budget: int,
                     chunk: int = 4096) -> TokenizedPrompts:
    """Measure every prompt; those over the `budget` (data.max_prompt_tokens, or what the model's context leaves:
    rlpt.preflight) are skipped and counted, or raise (data.on_too_long: error). Measured in chunks, batched
    through the tokenizer."""
    kept, lengths = array("q"), array("i")  # 12 bytes a row, however large the file
    skipped: list[str] = []
    for start in range(0, len(prompts), chunk):
        part = [prompts[i] for i in range(start, min(start + chunk, len(prompts)))]
        rendered = [render(tokenizer, p, cfg) for p in part]
        n_of = [0] * len(part)
        for special in (True, False):
            idx = [k for k, (_, s) in enumerate(rendered) if s is special]
            if idx:
                ids = tokenizer([rendered[k][0] for k in idx], add_special_tokens=special)["input_ids"]
                for k, row in zip(idx, ids):
                    n_of[k] = len(row)
        for k, (p, n) in enumerate(zip(part, n_of)):
            lengths.append(n)
            if n > budget:
                if cfg.on_too_long == "error":
                    raise PromptTooLongError(f"prompt {p.uid} has {n} tokens > the prompt budget of {budget} "
                                             f"(data.max_prompt_tokens={cfg.max_prompt_tokens}; set "
                                             f"data.on_too_long=skip to skip such prompts)")
                skipped.append(p.uid)
                continue
            kept.append(start + k)
    return TokenizedPrompts(prompts, tokenizer, cfg, kept, skipped, lengths)
