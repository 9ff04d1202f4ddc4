"""Model and tokenizer resolution: a user's HF directory, or the built-in tiny model built into the run root."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Sequence

from rlpt.config import RlptConfig
from rlpt.errors import SetupError


class ModelPathError(SetupError):
    pass


def tiny_cache_dir(cfg: RlptConfig) -> Path:
    """Where built-in tiny models are cached: inside the run root, never the user's home."""
    return Path(cfg.run.root) / ".cache"


def resolve_model_path(cfg: RlptConfig) -> Path:
    """The model directory to load; builds the built-in tiny model on first use when `model.path` is unset."""
    if cfg.model.path is None:
        from rlpt.models.tiny import ensure_tiny

        return ensure_tiny(tiny_cache_dir(cfg), cfg.model.tiny_arch, cfg.model.tiny_size).resolve()
    p = Path(cfg.model.path)
    if not (p / "config.json").is_file():
        raise ModelPathError(f"model.path={cfg.model.path!r}: no config.json there (a local HF model directory is "
                             "needed; rlpt does not download from a hub)")
    return p.resolve()


def load_tokenizer(path: str | Path) -> Any:
    """Load a tokenizer from a directory and check it has what generation needs (an EOS token).

    Uses PreTrainedTokenizerFast when a tokenizer.json is present: AutoTokenizer may substitute an
    architecture-specific class whose pre-tokenizer differs from the saved one (see notes/cpu-stack.md).
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelPathError(f"tokenizer path {str(p)!r} is not a directory")
    try:
        if (p / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(p)
        else:
            # Imported only here: importing AutoTokenizer imports torch and transformers' model registry (~2 s of
            # a run's preflight), which the tokenizer.json path does not need.
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(p)
    except (OSError, ValueError) as e:
        raise ModelPathError(f"could not load a tokenizer from {p}: {e}") from None
    if tok.eos_token_id is None:
        raise ModelPathError(f"tokenizer at {p} has no EOS token (set eos_token in its tokenizer_config.json)")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # padding is masked out everywhere; EOS is a safe stand-in
    return tok


def decode_completion(tokenizer: Any, ids: Sequence[int], eos_ids: Collection[int]) -> str:
    """The completion text the verifier sees: the sampled tokens without the EOS that ended them (any of the
    model's EOS ids, special or not: Llama 3's <|eot_id|>, Qwen's <|im_end|>) and without special tokens."""
    end = len(ids) - 1 if len(ids) and ids[-1] in eos_ids else len(ids)
    return tokenizer.decode(list(ids[:end]), skip_special_tokens=True)
