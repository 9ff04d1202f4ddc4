"""Discriminative reward models: how a (prompt, completion) becomes the model's input, how a batch is scored, and
the Bradley-Terry trainer behind `rlpt rm train`.

A reward model is an HF directory that `AutoModelForSequenceClassification` loads with one label; its value for a
rollout is that logit, read at the last token of prompt + completion. The trainer and the scoring actor
(actors/reward_model.py) render text with the same `rm_text`, so the model is scored on what it was trained on.
With a chat template the prompt is a user turn (a chat prompt keeps its turns) and the completion the assistant
turn; without one, the prompt text followed by the completion (what a base policy saw and wrote).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from rlpt.isolation import Verdict, VerifyItem
from rlpt.types import Prompt

if TYPE_CHECKING:
    import torch


def rm_text(tokenizer: Any, prompt: Prompt, completion: str) -> str:
    """The reward model's input text for one rollout (see the module docstring)."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt.text + completion
    turns = [{"role": role, "content": content} for role, content in prompt.messages] or [
        {"role": "user", "content": prompt.text}]
    return tokenizer.apply_chat_template(turns + [{"role": "assistant", "content": completion}], tokenize=False)


def load_reward_model(path: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) of a reward-model directory, ready to score: eval mode, a pad token set (the head pools
    at the last non-pad token), one label checked."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
    if model.config.num_labels != 1:
        raise ValueError(f"reward model {path}: a sequence-classification head with num_labels=1 is needed (one "
                         f"score per sequence), this one has {model.config.num_labels}")
    set_padding(model, tokenizer)
    return model.to(device()).eval(), tokenizer


def device() -> str:
    """cuda when this process sees a GPU (a Ray actor with num_gpus > 0 sees the ones it reserved), else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def set_padding(model: Any, tokenizer: Any) -> None:
    """Right padding with a pad id the model knows: the head reads the last non-pad token of each row."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id


def encode(tokenizer: Any, texts: Sequence[str]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Right-padded (input_ids_B_T, attention_mask_B_T); no special tokens added (a chat template has its own)."""
    enc = tokenizer(list(texts), add_special_tokens=False, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def rewards_of(model: Any, input_ids_B_T: "torch.Tensor", attention_mask_B_T: "torch.Tensor") -> "torch.Tensor":
    """[B] scores (the one-label head's logit at each row's last token), computed where the model is."""
    at = model.device
    return model(input_ids=input_ids_B_T.to(at), attention_mask=attention_mask_B_T.to(at)).logits[:, 0]


def score_items(model: Any, tokenizer: Any, items: Sequence[VerifyItem], batch_size: int, max_len: int,
                error_reward: float) -> list[Verdict]:
    """One Verdict per item, in order, `batch_size` rollouts per forward pass. An input longer than `max_len`
    tokens is an error row ("too_long: ..."), never truncated: a score of a cut-off text would be a silent lie."""
    import torch

    texts = [rm_text(tokenizer, p, c) for p, c in items]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    out: list[Verdict | None] = [
        (error_reward, None, {}, f"too_long: {n} tokens > max_len {max_len}") if n > max_len else None
        for n in lengths]
    todo = [i for i, v in enumerate(out) if v is None]
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            values = rewards_of(model, *encode(tokenizer, [texts[i] for i in idx]))
            for i, v in zip(idx, values.float().tolist()):
                out[i] = (float(v), None, {}, None)
    return [v for v in out if v is not None]
