"""Tiny random-init causal LMs and a locally trained tokenizer: no model hub needed, for tests and the default run.

The tokenizer is a small BPE over printable ASCII (160 tokens; digits split one per token; other characters map to
`<unk>`), trained with `tokenizers` on a seeded synthetic corpus shaped like the built-in tasks. The vocabulary is
small on purpose: a random-init policy then hits a right answer often enough (~1/100 per token rather than ~1/500
with a 512-token byte-level vocabulary) for reward-only learning to start within a few steps on CPU. Head size is 32,
which vLLM's CPU attention supports. Saved with `save_pretrained`, so transformers and vLLM load it from the path.
"""

from __future__ import annotations

import os
import random
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

# torch and transformers are imported where a model is built: the common case (the cached model exists) then costs
# `rlpt train` nothing (their import is ~3 s of the preflight on 2 cores).
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

Arch = Literal["llama", "qwen2"]
Size = Literal["tiny", "small"]
EOS = "<|endoftext|>"
UNK = "<unk>"
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>", UNK]
VOCAB_SIZE = 160
ALPHABET = [c for c in string.printable if c not in " \x0b\x0c\r"] + ["\u2581"]  # U+2581 stands for a space


@dataclass(frozen=True)
class TinyShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


SHAPES: dict[str, TinyShape] = {
    "tiny": TinyShape(hidden=64, intermediate=256, layers=2, heads=2, kv_heads=2),  # ~0.12M params
    "small": TinyShape(hidden=256, intermediate=1024, layers=4, heads=8, kv_heads=4),  # ~3.7M params
}


def _corpus(seed: int, n: int = 4000) -> list[str]:
    rng = random.Random(seed)
    words = ("the answer is use to make and of a number sum total result think step first then so "
             "Question Answer solve compute what is plus minus times equals").split()
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*/")
        lines.append(f"{a}{op}{b}={rng.randint(0, 199)}")
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))))
        lines.append(f"Use {a} {b} {rng.randint(1, 9)} to make {rng.randint(1, 100)}: ({a}{op}{b})")
    return lines


def train_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Metaspace(prepend_scheme="never")]
    )
    tok.decoder = decoders.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=ALPHABET,
        limit_alphabet=len(ALPHABET), show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token=UNK)


def build_model(arch: Arch, size: Size, vocab_size: int, eos_id: int, seed: int) -> torch.nn.Module:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    s = SHAPES[size]
    common = dict(
        vocab_size=vocab_size, hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
        max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id,
        pad_token_id=eos_id, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(head_dim=s.hidden // s.heads, **common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def init_tiny(out: str | Path, arch: Arch = "llama", size: Size = "tiny", seed: int = 0) -> Path:
    """Build and save a tiny model + tokenizer into `out` (atomically: a half-written directory never appears)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    from transformers import GenerationConfig

    try:
        tokenizer = train_tokenizer(seed)
        eos_id = tokenizer.convert_tokens_to_ids(EOS)
        model = build_model(arch, size, len(tokenizer), eos_id, seed)
        model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=eos_id, bos_token_id=eos_id)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" bars would break the quiet console
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            hf_logging.enable_progress_bar()
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_tiny(cache_dir: str | Path, arch: Arch, size: Size, seed: int = 0) -> Path:
    """The cached tiny model for (arch, size, seed), built on first use. Safe when several processes race."""
    out = Path(cache_dir) / f"tiny-{arch}-{size}-seed{seed}"
    if (out / "config.json").is_file():
        return out
    try:
        return init_tiny(out, arch, size, seed)
    except (FileExistsError, OSError):
        if (out / "config.json").is_file():  # another process won the race
            return out
        raise
