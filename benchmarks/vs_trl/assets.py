"""Build the benchmark's assets, made here and nowhere else (no hub): per workload a random-init Llama model
directory with its tokenizer (plain transformers `save_pretrained`, so rlpt, vLLM and TRL all load it from the path)
and a prompt file (`prompts.jsonl`, columns `prompt` and `answer`). Both systems read the very same files.

Idempotent: a stamp per workload holds a hash of this file and workloads.py; with nothing changed, nothing is
rebuilt.

    .venv/bin/python benchmarks/vs_trl/assets.py --out runs/vs_trl/assets
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from workloads import WORKLOADS, Workload  # noqa: E402  (this folder is not a package)

EOS, UNK = "<eos>", "<unk>"
CHARS = "0123456789+=- "  # with <eos> and <unk>: the 16 tokens of the tiny workload


def char_tokenizer() -> Any:
    """One token per character (WordLevel over single characters); decodes without separators."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {UNK: 0, EOS: 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()  # WordLevel would join tokens with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, unk_token=UNK, pad_token=EOS)


def byte_bpe_tokenizer(vocab_size: int, seed: int = 0) -> Any:
    """Byte-level BPE (GPT-2 style, 256 byte symbols + merges) trained on a seeded arithmetic/word corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = ("question what is the answer sum of and plus equals so first then result number total think step "
             "add two numbers carry digit tens ones").split()
    corpus = [f"Question: what is {rng.randint(0, 99)}+{rng.randint(0, 99)}= {rng.randint(0, 198)}. "
              + " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(4000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def build_model_dir(w: Workload, out: Path, seed: int = 0) -> int:
    """Random-init Llama + tokenizer saved to `out`; returns the parameter count."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars would fill the benchmark's log

    tok = char_tokenizer() if w.tokenizer == "char" else byte_bpe_tokenizer(w.vocab, seed)
    if len(tok) > w.vocab:
        raise ValueError(f"workload {w.name}: tokenizer has {len(tok)} tokens, more than vocab={w.vocab}")
    eos = tok.eos_token_id
    s = w.shape
    cfg = LlamaConfig(vocab_size=w.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                      num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
                      max_position_embeddings=s.positions, tie_word_embeddings=False,
                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def write_prompts(w: Workload, path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(w.num_prompts):
            a, b = rng.randint(0, w.max_operand), rng.randint(0, w.max_operand)
            f.write(json.dumps({"prompt": f"{w.prompt_prefix}{a}+{b}=", "answer": str(a + b)}) + "\n")


def source_hash() -> str:
    h = hashlib.sha256()
    for name in ("assets.py", "workloads.py"):
        h.update((HERE / name).read_bytes())
    return h.hexdigest()[:16]


def build_assets(out: Path, names: list[str]) -> Path:
    """The `model/` and `prompts.jsonl` of each named workload under `out/<workload>/` (skipped while its stamp
    matches this code)."""
    for name in names:
        w, d = WORKLOADS[name], out / name
        stamp = d / ".assets-stamp"
        if stamp.is_file() and stamp.read_text() == source_hash():
            print(f"[assets] {name}: up to date in {d}", flush=True)
            continue
        n = build_model_dir(w, d / "model")
        write_prompts(w, d / "prompts.jsonl")
        stamp.write_text(source_hash())
        print(f"[assets] {name}: {n:,} params, {w.tokenizer} tokenizer (vocab {w.vocab}), "
              f"{w.num_prompts} prompts -> {d}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/vs_trl/assets"))
    p.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    a = p.parse_args()
    build_assets(a.out, a.workloads)


if __name__ == "__main__":
    main()
