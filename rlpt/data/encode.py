"""Turn prompt text into policy input ids: chat template when the tokenizer has one (per config), length checks."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rlpt.config import DataConfig
from rlpt.types import Prompt


class PromptTooLongError(ValueError):
    pass


@dataclass(frozen=True)
class TokenizedPrompts:
    prompts: list[Prompt]
    skipped_too_long: list[str]  # uids


def uses_chat_template(tokenizer: Any, mode: str) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "always" and not has:
        raise ValueError("data.chat_template is 'always' but the tokenizer has no chat template")
    return has and mode != "never"


def prompt_ids(tokenizer: Any, prompt: Prompt, cfg: DataConfig) -> list[int]:
    if uses_chat_template(tokenizer, cfg.chat_template):
        messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
        messages.append({"role": "user", "content": prompt.text})
        # Render to text, then tokenize: apply_chat_template(tokenize=True) changed return types across versions.
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = f"{cfg.system_prompt}\n{prompt.text}" if cfg.system_prompt else prompt.text
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def tokenize_prompts(prompts: list[Prompt], tokenizer: Any, cfg: DataConfig) -> TokenizedPrompts:
    """Attach `prompt_ids`. Prompts over `cfg.max_prompt_tokens` are skipped and counted, or raise (config)."""
    kept, skipped = [], []
    for p in prompts:
        ids = prompt_ids(tokenizer, p, cfg)
        if len(ids) > cfg.max_prompt_tokens:
            if cfg.on_too_long == "error":
                raise PromptTooLongError(f"prompt {p.uid} has {len(ids)} tokens > data.max_prompt_tokens="
                                         f"{cfg.max_prompt_tokens} (set data.on_too_long=skip to skip such prompts)")
            skipped.append(p.uid)
            continue
        kept.append(replace(p, prompt_ids=tuple(ids)))
    if not kept:
        raise ValueError(f"all {len(prompts)} prompts are longer than data.max_prompt_tokens={cfg.max_prompt_tokens}")
    return TokenizedPrompts(kept, skipped)
